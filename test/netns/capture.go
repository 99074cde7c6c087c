package netns

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Query is one DNS question a pod sent, as seen on the wire.
type Query struct {
	Type, Name string // "A", "www.example.com."
}

func (q Query) String() string { return q.Type + " " + q.Name }

// Capture records the DNS queries a pod sends over UDP, with tcpdump on the
// host end of its veth: what the pod really put on the wire, whoever
// answers.
type Capture struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	queries []Query
	done    chan error
}

// tcpdump prints "... > 10.245.0.1.53: 4242+ AAAA? name. (59)".
var queryLine = regexp.MustCompile(`\s\d+\+?%?\s+([A-Z0-9]+)\?\s+(\S+)\s`)

// CaptureDNS starts capturing the pod's outgoing DNS queries. Stop it with
// Stop; it also ends with ctx.
func (p *Pod) CaptureDNS(ctx context.Context) (*Capture, error) {
	return CaptureDNSOn(ctx, p.HostVeth)
}

// CaptureDNSOn captures the DNS queries arriving over UDP on a host
// interface: the host end of a pod's veth, whatever made the pod.
func CaptureDNSOn(ctx context.Context, ifname string) (*Capture, error) {
	path, err := exec.LookPath("tcpdump")
	if err != nil {
		return nil, fmt.Errorf("%w: tcpdump not installed (make deps installs it)", ErrUnavailable)
	}
	c := &Capture{done: make(chan error, 1)}
	c.cmd = exec.CommandContext(ctx, path, "-i", ifname, "-n", "-l", "-Q", "in", "udp dst port 53")
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("tcpdump: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := queryLine.FindStringSubmatch(sc.Text()); m != nil {
				c.mu.Lock()
				c.queries = append(c.queries, Query{Type: m[1], Name: m[2]})
				c.mu.Unlock()
			}
		}
		c.done <- c.cmd.Wait()
	}()
	// tcpdump says "listening on <if>" once the capture is armed.
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var seen []string
		for sc.Scan() {
			seen = append(seen, sc.Text())
			if strings.Contains(sc.Text(), "listening on") {
				ready <- ""
			}
		}
		ready <- strings.Join(seen, "\n")
	}()
	select {
	case msg := <-ready:
		if msg != "" {
			return nil, fmt.Errorf("tcpdump did not start: %s", msg)
		}
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		return nil, fmt.Errorf("tcpdump on %s not listening after 10s", ifname)
	}
	return c, nil
}

// Queries returns what has been captured so far.
func (c *Capture) Queries() []Query {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Query(nil), c.queries...)
}

// settle lets packets already sent reach tcpdump's output.
const settle = 200 * time.Millisecond

// Take returns the queries captured since the last Take (or the start),
// after letting packets already on the wire arrive.
func (c *Capture) Take() []Query {
	time.Sleep(settle)
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queries
	c.queries = nil
	return q
}

// Stop ends the capture after letting packets already on the wire arrive,
// and returns every query captured.
func (c *Capture) Stop() []Query {
	time.Sleep(settle)
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	return c.Queries()
}
