//go:build !linux

package nodecache

import "errors"

func (fe *frontend) start(int) (func(), error) {
	return nil, errors.New("the UDP fast path needs Linux")
}
