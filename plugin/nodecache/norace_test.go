//go:build !race

package nodecache_test

const raceEnabled = false
