// Package owner records which test process owns a leftover-prone resource
// (a data directory, a network namespace), so that a later run can remove
// what a crashed test binary left behind without touching the resources of
// test binaries that are still running. A process is named by its pid and
// start time, so a recycled pid does not look alive.
package owner

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Write records the current process as the owner in file.
func Write(file string) error {
	return os.WriteFile(file, []byte(self()), 0o644)
}

func self() string {
	return fmt.Sprintf("%d %d\n", os.Getpid(), startTime(os.Getpid()))
}

// Alive reports whether the process recorded in file still runs.
func Alive(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	pid, err1 := strconv.Atoi(f[0])
	st, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return false
	}
	return startTime(pid) == st
}

// startTime returns field 22 of /proc/<pid>/stat (0 if not running).
func startTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}
