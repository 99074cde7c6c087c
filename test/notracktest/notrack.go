// Package notracktest names the NOTRACK tables (datapath/notrack) that tests and
// benchmarks give node-cache, and removes those of processes that died.
package notracktest

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/nftables"

	"github.com/dnsaccel/dnsaccel/datapath/notrack"
)

// NotrackTable is the name a bench gives node-cache's NOTRACK table
// (--notrack-table): prefix-<pid>, never a real node-cache's.
func NotrackTable(prefix string) string { return fmt.Sprintf("%s-%d", prefix, os.Getpid()) }

// SweepNotrackTables removes the NotrackTable tables (with this prefix) of
// processes that no longer run.
func SweepNotrackTables(prefix string) {
	c, err := nftables.New()
	if err != nil {
		return
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return
	}
	for _, t := range tables {
		pid, ok := strings.CutPrefix(t.Name, prefix+"-")
		if _, err := strconv.Atoi(pid); !ok || err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err != nil {
			notrack.Table{Name: t.Name}.Remove()
		}
	}
}
