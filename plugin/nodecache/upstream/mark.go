package upstream

import "net"

// dialer returns the net.Dialer for upstream sockets: with a non-zero mark
// (Config.Mark) every socket carries it as SO_MARK (Linux only).
func dialer(mark uint32) *net.Dialer {
	d := &net.Dialer{}
	if mark != 0 {
		d.Control = markControl(mark)
	}
	return d
}
