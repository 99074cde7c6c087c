//go:build race

package nodecache_test

// raceEnabled: the race detector's shadow memory makes RSS meaningless.
const raceEnabled = true
