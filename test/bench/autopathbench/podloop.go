package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// podLoopCmd is the hidden first argument that makes the program the lookup
// loop inside a netns pod (started through `ip netns exec`, so it sees the
// pod's resolv.conf). Timing there leaves the cost of entering the
// namespace out of every lookup.
const podLoopCmd = "pod-lookup-loop"

// podLoop looks a name up n times and prints each lookup's wall time in
// nanoseconds, one per line. Modes: getent (glibc `getent ahosts`, a
// process per lookup) and go (Go's own resolver, in process).
func podLoop(args []string) int {
	fs := flag.NewFlagSet(podLoopCmd, flag.ContinueOnError)
	mode := fs.String("mode", "getent", "getent or go")
	name := fs.String("name", "", "name to look up")
	n := fs.Int("n", 1, "lookups")
	want := fs.String("want", "", "address every lookup must return")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := &net.Resolver{PreferGo: true}
	var out bytes.Buffer
	for i := range *n {
		t0 := time.Now()
		var got string
		switch *mode {
		case "getent":
			b, err := exec.CommandContext(ctx, "getent", "ahosts", *name).Output()
			if err != nil {
				fmt.Fprintf(os.Stderr, "lookup %d: getent ahosts %s: %v\n", i, *name, err)
				return 1
			}
			got = string(b)
		case "go":
			addrs, err := r.LookupIPAddr(ctx, *name)
			if err != nil {
				fmt.Fprintf(os.Stderr, "lookup %d: %v\n", i, err)
				return 1
			}
			got = fmt.Sprint(addrs)
		default:
			fmt.Fprintf(os.Stderr, "unknown mode %q\n", *mode)
			return 2
		}
		d := time.Since(t0)
		if *want != "" && !strings.Contains(got, *want) {
			fmt.Fprintf(os.Stderr, "lookup %d of %s: %q lacks %s\n", i, *name, got, *want)
			return 1
		}
		out.WriteString(strconv.FormatInt(d.Nanoseconds(), 10) + "\n")
	}
	os.Stdout.Write(out.Bytes())
	return 0
}
