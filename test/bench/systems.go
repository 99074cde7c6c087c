package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Zone served by the upstream: name0..name{cachedNames-1} are the cached
// working set; *.miss.bench.test answers any never-seen name (miss path).
const (
	zoneName    = "bench.test."
	cachedNames = 1000
)

// env is what a system needs to start.
type env struct {
	dir            string // private temp dir of this run
	upstreamPort   int
	serverCPU      int
	procs          *procSet
	ports          *portAlloc
	coredns        string // stock CoreDNS binary
	nodeCache      string // node-cache binary
	nodeCacheShown string // as given on the command line
	// bind is the address the systems answer on ("" = 127.0.0.1); other
	// benchmarks (Peers) set it to an address pods reach.
	bind string
}

// bindIP is the address the systems answer on.
func (e *env) bindIP() string {
	if e.bind == "" {
		return "127.0.0.1"
	}
	return e.bind
}

// accessControl is unbound's access-control lines: loopback, and everyone
// when answering on another address (Peers: queries come from pods).
func (e *env) accessControl() string {
	if e.bind == "" {
		return "access-control: 127.0.0.0/8 allow"
	}
	return "access-control: 0.0.0.0/0 allow"
}

// system is one DNS cache under test.
type system struct {
	name  string // as used in -systems
	label string // for tables
	// check reports why the system cannot run here ("" = it can).
	check func(e *env) string
	// version returns a short version string.
	version func(ctx context.Context, e *env) string
	// start launches the server on 127.0.0.1:port pinned to e.serverCPU.
	start func(e *env, port int) (*proc, error)
	// notes describes the configuration, for the docs.
	notes string
}

// AllSystems lists the systems in their default order.
var AllSystems = []string{"node-cache", "coredns", "unbound", "dnsmasq"}

func lookupSystem(name string) (*system, bool) {
	for _, s := range systems {
		if s.name == name {
			return s, true
		}
	}
	return nil, false
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func needBinary(name string) string {
	if _, err := lookPath(name); err != nil {
		return name + " is not installed"
	}
	return ""
}

func lookPath(name string) (string, error) {
	for _, d := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/usr/bin", "/sbin") {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

var systems = []*system{
	{
		name:  "node-cache",
		label: "node-cache",
		check: func(e *env) string {
			if st, err := os.Stat(e.nodeCache); err != nil || st.IsDir() {
				return fmt.Sprintf("%s not found (build it first)", e.nodeCacheShown)
			}
			return ""
		},
		version: func(ctx context.Context, e *env) string {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			out, err := runCmd(cctx, -1, e.nodeCache, "--version")
			if err != nil {
				return "dev"
			}
			return firstLine(out)
		},
		start: func(e *env, port int) (*proc, error) {
			mp, err := e.ports.get()
			if err != nil {
				return nil, err
			}
			hp, err := e.ports.get()
			if err != nil {
				return nil, err
			}
			return e.procs.start("node-cache", e.serverCPU, nil, filepath.Join(e.dir, "node-cache.log"),
				e.nodeCache,
				"--listen", net.JoinHostPort(e.bindIP(), strconv.Itoa(port)),
				"--upstream", fmt.Sprintf("127.0.0.1:%d", e.upstreamPort),
				"--metrics", fmt.Sprintf("127.0.0.1:%d", mp),
				"--health", fmt.Sprintf("127.0.0.1:%d", hp))
		},
		notes: "`bin/node-cache --listen 127.0.0.1:P --upstream 127.0.0.1:UP --metrics 127.0.0.1:M --health 127.0.0.1:H`",
	},
	{
		name:  "coredns",
		label: "CoreDNS (stock)",
		check: func(e *env) string {
			if e.coredns == "" {
				return "stock CoreDNS binary unavailable"
			}
			return ""
		},
		version: func(ctx context.Context, e *env) string {
			out, err := runCmd(ctx, -1, e.coredns, "-version")
			if err != nil {
				return "?"
			}
			return firstLine(out)
		},
		start: func(e *env, port int) (*proc, error) {
			mp, err := e.ports.get()
			if err != nil {
				return nil, err
			}
			hp, err := e.ports.get()
			if err != nil {
				return nil, err
			}
			// The NodeLocal DNSCache Corefile (cluster.local block), minus
			// reload/loop, which do no per-query work.
			corefile := fmt.Sprintf(`.:%d {
    bind %s
    errors
    cache {
        success 9984 30
        denial 9984 5
    }
    forward . 127.0.0.1:%d {
        force_tcp
    }
    prometheus 127.0.0.1:%d
    health 127.0.0.1:%d
}
`, port, e.bindIP(), e.upstreamPort, mp, hp)
			cf := filepath.Join(e.dir, "Corefile.coredns")
			if err := os.WriteFile(cf, []byte(corefile), 0o644); err != nil {
				return nil, err
			}
			return e.procs.start("coredns", e.serverCPU, []string{"GOMAXPROCS=1"}, filepath.Join(e.dir, "coredns.log"),
				e.coredns, "-conf", cf)
		},
		notes: "NodeLocal DNSCache's Corefile: `errors`, `cache { success 9984 30; denial 9984 5 }`, " +
			"`forward . 127.0.0.1:UP { force_tcp }`, `prometheus`, `health` (no `reload`/`loop`), GOMAXPROCS=1",
	},
	{
		name:  "unbound",
		label: "unbound",
		check: func(e *env) string { return needBinary("unbound") },
		version: func(ctx context.Context, e *env) string {
			out, _ := runCmd(ctx, -1, "unbound", "-V")
			return "unbound " + strings.TrimPrefix(firstLine(out), "Version ")
		},
		start: func(e *env, port int) (*proc, error) {
			conf := fmt.Sprintf(`server:
    num-threads: 1
    interface: %s
    port: %d
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    %s
    username: ""
    chroot: ""
    directory: "%s"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    module-config: "iterator"
    do-not-query-localhost: no
    local-zone: "test." nodefault
    qname-minimisation: no
    prefetch: no
    so-reuseport: no
    msg-cache-size: 32m
    msg-cache-slabs: 1
    rrset-cache-size: 64m
    rrset-cache-slabs: 1
    infra-cache-slabs: 1
    key-cache-slabs: 1
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@%d
`, e.bindIP(), port, e.accessControl(), e.dir, e.upstreamPort)
			cf := filepath.Join(e.dir, "unbound.conf")
			if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
				return nil, err
			}
			return e.procs.start("unbound", e.serverCPU, nil, filepath.Join(e.dir, "unbound.log"),
				"unbound", "-d", "-p", "-c", cf)
		},
		notes: "1 thread, iterator only (no DNSSEC validation), `forward-zone \".\"` to the upstream, " +
			"32 MiB msg / 64 MiB rrset cache, prefetch off, generated config in a temp dir, run with `-d`",
	},
	{
		name:  "dnsmasq",
		label: "dnsmasq",
		check: func(e *env) string { return needBinary("dnsmasq") },
		version: func(ctx context.Context, e *env) string {
			out, _ := runCmd(ctx, -1, "dnsmasq", "--version")
			f := strings.Fields(firstLine(out))
			if len(f) >= 3 {
				return "dnsmasq " + f[2]
			}
			return "dnsmasq"
		},
		start: func(e *env, port int) (*proc, error) {
			return e.procs.start("dnsmasq", e.serverCPU, nil, filepath.Join(e.dir, "dnsmasq.log"),
				"dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
				"--log-facility=-",
				"--server=127.0.0.1#"+strconv.Itoa(e.upstreamPort),
				"--cache-size=10000", "--dns-forward-max=1000",
				"--port="+strconv.Itoa(port), "--listen-address="+e.bindIP(), "--bind-interfaces")
		},
		notes: "`--no-daemon --conf-file=/dev/null --no-resolv --no-hosts --server=127.0.0.1#UP --cache-size=10000 " +
			"--dns-forward-max=1000 --listen-address=127.0.0.1 --bind-interfaces`",
	},
}

// upstreamZone renders the authoritative zone served by the upstream.
func upstreamZone() string {
	var b strings.Builder
	b.WriteString("$ORIGIN " + zoneName + "\n")
	b.WriteString("@ 3600 IN SOA ns.bench.test. hostmaster.bench.test. 1 7200 3600 1209600 3600\n")
	b.WriteString("@ 3600 IN NS ns\nns 3600 IN A 127.0.0.1\n")
	for i := range cachedNames {
		fmt.Fprintf(&b, "name%d 3600 IN A 10.0.%d.%d\n", i, i/256, i%256)
	}
	b.WriteString("*.miss 3600 IN A 10.255.0.1\n")
	return b.String()
}

// startUpstream starts stock CoreDNS as the authoritative upstream (file
// plugin), pinned to cpu.
func startUpstream(e *env, port, cpu int) (*proc, error) {
	zf := filepath.Join(e.dir, "db.bench.test")
	if err := os.WriteFile(zf, []byte(upstreamZone()), 0o644); err != nil {
		return nil, err
	}
	corefile := fmt.Sprintf("bench.test:%d {\n    bind 127.0.0.1\n    file %s\n}\n", port, zf)
	cf := filepath.Join(e.dir, "Corefile.upstream")
	if err := os.WriteFile(cf, []byte(corefile), 0o644); err != nil {
		return nil, err
	}
	return e.procs.start("upstream", cpu, nil, filepath.Join(e.dir, "upstream.log"), e.coredns, "-conf", cf)
}

func cachedNameList() []string {
	names := make([]string, cachedNames)
	for i := range names {
		names[i] = fmt.Sprintf("name%d.%s", i, zoneName)
	}
	return names
}

// missNameList returns n names under the *.miss wildcard that no cache has
// seen (tag must be unique per use).
func missNameList(n int, tag string) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("m%d.%s.miss.%s", i, tag, zoneName)
	}
	return names
}
