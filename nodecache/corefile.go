// Package nodecache is the node agent behind bin/node-cache: it runs the
// embedded CoreDNS server with dnsaccel's plugins on the node's cache
// addresses, and serves health, readiness and metrics.
package nodecache

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/util/validation"

	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// Config is what the agent runs with; cmd/node-cache fills it from flags.
type Config struct {
	Listen    []string // ADDR:PORT the cache answers on
	Upstreams []string // ADDR:PORT of the node's resolvers
	Conf      string   // a Corefile that replaces the generated one
	Metrics   string   // ADDR of /metrics
	Health    string   // ADDR of /health and /ready

	// Kubernetes mode (Kube.Enabled) splits the generated Corefile as
	// node-local-dns does: the cluster domain and the reverse zones go to
	// the cluster DNS with k8s_autopath in front of the cache, the rest to
	// Upstreams.
	Kube             Kube
	NodeName         string   // k8s_autopath indexes only this node's pods; "" = all
	ClusterDomain    string   // the cluster's DNS domain, e.g. cluster.local
	ClusterUpstreams []string // ADDR:PORT of the cluster DNS
	// ClusterUpstreamsFrom says where ClusterUpstreams came from (the flag
	// or a Service), for the start-up log and errors.
	ClusterUpstreamsFrom string
	// Search are the node's search domains for k8s_autopath; nil leaves
	// its default, the search line of this process's /etc/resolv.conf.
	Search []string

	// Steer is the eBPF steering of the cluster DNS VIP to the cache.
	Steer Steer
	// KernelCache answers hot names in the kernel, at pods' interfaces
	// (with steering: it answers queries to the local IPs).
	KernelCache KernelCache

	// CacheMaxBytes is the generated blocks' max_bytes: the bytes each
	// block's cached entries may take; 0 = DefaultCacheMaxBytes.
	CacheMaxBytes ByteSize

	// Accounting is the per-pod DNS accounting, its metrics, the
	// observability endpoint and the query log (accounting.go).
	Accounting Accounting
}

// DefaultCacheMaxBytes is --cache-max-bytes' default, the plugin's: 64 MiB,
// well below the 200 MiB memory limit node-cache pods commonly get.
const DefaultCacheMaxBytes = ByteSize(nodecacheplugin.DefaultMaxBytes)

// ByteSize is a size flag: bytes, or with a K, M or G suffix (powers of
// 1024), as the nodecache plugin's max_bytes reads it.
type ByteSize int64

// Set implements pflag.Value.
func (b *ByteSize) Set(s string) error {
	n, err := nodecacheplugin.ParseSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(n)
	return nil
}

// String writes b in the largest unit that keeps it exact.
func (b *ByteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"G", 30}, {"M", 20}, {"K", 10}} {
		if n > 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Type implements pflag.Value.
func (b *ByteSize) Type() string { return "SIZE" }

// Mode names how the Corefile is made, for logs.
func (c *Config) Mode() string {
	switch {
	case c.Conf != "":
		return "conf"
	case c.Kube.Enabled():
		return "kubernetes"
	}
	return "standalone"
}

// LogAttrs describe the configuration for the start-up log: the mode and,
// in Kubernetes mode, the cluster upstreams and where they came from.
func (c *Config) LogAttrs() []any {
	attrs := []any{"mode", c.Mode()}
	switch c.Mode() {
	case "conf":
		return append(attrs, "conf", c.Conf)
	case "kubernetes":
		attrs = append(attrs, "api", c.Kube.String(), "node", c.NodeName, "cluster-domain", c.ClusterDomain,
			"cluster-upstreams", c.ClusterUpstreams, "cluster-upstreams-from", c.ClusterUpstreamsFrom)
	}
	attrs = append(attrs, "listen", c.listenAddrs(), "upstreams", c.Upstreams, "steer", c.Steer.Enabled())
	if c.Steer.Enabled() {
		attrs = append(attrs, "cluster-dns", c.Steer.ClusterDNS, "cluster-dns-from", c.Steer.ClusterDNSFrom, "local-ip", c.Steer.LocalIPs, "notrack", c.Steer.Notrack)
	}
	return attrs
}

// Validate checks the configuration, naming the field at fault.
func (c *Config) Validate() error {
	if err := c.validateSteer(); err != nil {
		return err
	}
	if c.KernelCache.On {
		if err := c.KernelCache.validate(); err != nil {
			return err
		}
	}
	if err := c.Accounting.validate(); err != nil {
		return err
	}
	if c.Conf != "" {
		if _, err := os.Stat(c.Conf); err != nil {
			return fmt.Errorf("--conf: %w", err)
		}
		return nil
	}
	listen, err := c.validateListen()
	if err != nil {
		return err
	}
	if len(c.Upstreams) == 0 {
		return fmt.Errorf("--upstream: none given and none found in /etc/resolv.conf")
	}
	if err := validateUpstreams("--upstream", "", c.Upstreams, listen); err != nil {
		return err
	}
	if !c.Kube.Enabled() {
		if len(c.ClusterUpstreams) > 0 {
			// Ignoring it would quietly send cluster names to the node's resolvers.
			return fmt.Errorf("--cluster-upstream: only used in Kubernetes mode (--kubeconfig, or running in a pod)")
		}
		return nil
	}
	return c.validateKubernetes(listen)
}

// validateListen returns the listen addresses as a set.
func (c *Config) validateListen() (map[netip.AddrPort]bool, error) {
	if len(c.listenAddrs()) == 0 {
		return nil, fmt.Errorf("--listen: at least one address is required")
	}
	listen := map[netip.AddrPort]bool{}
	for _, l := range c.listenAddrs() {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: want IP:PORT: %v", l, err)
		}
		if ap.Addr().IsUnspecified() {
			return nil, fmt.Errorf("--listen %q: an explicit address is required, not a wildcard", l)
		}
		listen[ap] = true
	}
	return listen, nil
}

// validateUpstreams checks that upstreams are IP:PORT and that none is a
// listen address; from, if not the flag, says where they came from.
func validateUpstreams(flag, from string, ups []string, listen map[netip.AddrPort]bool) error {
	if from != "" && from != flag {
		from = " (from " + from + ")"
	} else {
		from = ""
	}
	for _, u := range ups {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			return fmt.Errorf("%s %q%s: want IP:PORT: %v", flag, u, from, err)
		}
		if listen[ap] {
			return fmt.Errorf("%s %s%s is also a --listen address: the cache would forward to itself", flag, u, from)
		}
	}
	return nil
}

func (c *Config) validateKubernetes(listen map[netip.AddrPort]bool) error {
	if err := validateClusterDomain(c.ClusterDomain); err != nil {
		return err
	}
	if len(c.ClusterUpstreams) == 0 {
		return fmt.Errorf("--cluster-upstream: none given and none found in the API")
	}
	if err := validateUpstreams("--cluster-upstream", c.ClusterUpstreamsFrom, c.ClusterUpstreams, listen); err != nil {
		return err
	}
	if k := c.Kube.Kubeconfig; k != "" {
		if strings.ContainsAny(k, "\"\\") || strings.ContainsFunc(k, unicode.IsControl) {
			// The path goes into the Corefile, which cannot carry these.
			return fmt.Errorf("--kubeconfig %q: quotes, backslashes and control characters are not supported", k)
		}
		if _, err := os.Stat(k); err != nil {
			return fmt.Errorf("--kubeconfig: %w", err)
		}
	}
	if c.NodeName != "" {
		if errs := validation.IsDNS1123Subdomain(c.NodeName); len(errs) > 0 {
			return fmt.Errorf("--node-name %q: not a node name: %s", c.NodeName, strings.Join(errs, "; "))
		}
	}
	for _, d := range c.Search {
		if z := zoneName(d); z == "" || !isDomainName(z) {
			return fmt.Errorf("--resolv-conf: search domain %q is not a domain name", d)
		}
	}
	return nil
}

// reverseZones are served by the cluster DNS like the cluster domain: it
// answers PTR for Service and Pod IPs (node-local-dns does the same).
var reverseZones = []string{"in-addr.arpa", "ip6.arpa"}

func validateClusterDomain(d string) error {
	z := zoneName(d)
	if z == "" || !isDomainName(z) {
		return fmt.Errorf("--cluster-domain %q: not a domain name", d)
	}
	for _, r := range reverseZones {
		if z == r {
			return fmt.Errorf("--cluster-domain %q: a reverse zone, already sent to the cluster DNS", d)
		}
	}
	return nil
}

// isDomainName accepts the names a cluster or search domain has in
// practice; characters the Corefile gives meaning to (space, #, {, :, /...)
// are refused rather than quoted.
func isDomainName(s string) bool {
	_, ok := dns.IsDomainName(s)
	return ok && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	})
}

// zoneName is a domain as written in the Corefile: lower case, no final dot.
func zoneName(d string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".") }

// ResolvConfUpstreams returns the nameservers of a resolv.conf as IP:53.
func ResolvConfUpstreams(path string) ([]string, error) {
	ns, _, err := readResolvConf(path)
	return ns, err
}

// ResolvConfSearch returns the search domains of a resolv.conf: on a node,
// what the kubelet appends to every ClusterFirst pod's search list.
func ResolvConfSearch(path string) ([]string, error) {
	_, search, err := readResolvConf(path)
	return search, err
}

func readResolvConf(path string) (nameservers, search []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if ip, err := netip.ParseAddr(fields[1]); err == nil {
				nameservers = append(nameservers, netip.AddrPortFrom(ip.WithZone(""), 53).String())
			}
		case "search", "domain": // the last one wins, as in glibc
			search = fields[1:]
		}
	}
	return nameservers, search, sc.Err()
}

// Source returns the Corefile the agent runs and its name for messages:
// the --conf file, or the generated one.
func (c *Config) Source() (corefile, name string, err error) {
	if c.Conf == "" {
		return c.Corefile(), "generated", nil
	}
	b, err := os.ReadFile(c.Conf)
	if err != nil {
		return "", "", fmt.Errorf("--conf: %w", err)
	}
	corefile, err = c.fillPillars(string(b))
	if err != nil {
		return "", "", err
	}
	if c.Steer.Enabled() {
		corefile = withUpstreamMark(corefile, c.Steer.UpstreamMark)
	}
	return corefile, c.Conf, nil
}

// nodecacheLine is a nodecache directive: its indentation and arguments
// (with a final "{" when it has options).
var nodecacheLine = regexp.MustCompile(`^(\s*)nodecache(\s.*)?$`)

// withUpstreamMark gives every nodecache directive of a --conf Corefile
// that sets no upstream_mark of its own `upstream_mark MARK`, as the
// generated Corefile has it: with steering, the cache's upstream sockets
// must carry --upstream-mark, or the programs would steer its queries to
// the VIP (its upstream, often) back to itself. Only the file itself is
// read, not what it imports.
func withUpstreamMark(corefile string, mark uint32) string {
	opt := fmt.Sprintf("upstream_mark %#x", mark)
	lines := strings.Split(corefile, "\n")
	out := make([]string, 0, len(lines)+8)
	for i := 0; i < len(lines); i++ {
		m := nodecacheLine.FindStringSubmatch(lines[i])
		if m == nil {
			out = append(out, lines[i])
			continue
		}
		indent, args := m[1], strings.TrimSpace(uncomment(m[2]))
		if !strings.HasSuffix(args, "{") {
			out = append(out, indent+"nodecache "+args+" {", indent+"    "+opt, indent+"}")
			continue
		}
		out = append(out, lines[i])
		// The options up to the matching brace: add the mark unless set.
		depth, has := 1, false
		for j := i + 1; j < len(lines) && depth > 0; j++ {
			f := strings.Fields(uncomment(lines[j]))
			if depth == 1 && len(f) > 0 && f[0] == "upstream_mark" {
				has = true
			}
			for _, w := range f {
				depth += strings.Count(w, "{") - strings.Count(w, "}")
			}
		}
		if !has {
			out = append(out, indent+"    "+opt)
		}
	}
	return strings.Join(out, "\n")
}

// uncomment cuts a Corefile line at its comment (a # starting a word).
func uncomment(line string) string {
	for i, r := range line {
		if r == '#' && (i == 0 || unicode.IsSpace(rune(line[i-1]))) {
			return line[:i]
		}
	}
	return line
}

// block is one server block of the generated Corefile, repeated per port.
type block struct {
	zones     []string
	autopath  bool // k8s_autopath in front of the cache
	upstreams []string
}

// blocks are the server blocks of every port: one for everything, or in
// Kubernetes mode the cluster zones apart from the rest. CoreDNS routes a
// query to the block of its longest matching zone, so "." gets the rest.
func (c *Config) blocks() []block {
	rest := block{zones: []string{"."}, upstreams: c.Upstreams}
	if !c.Kube.Enabled() {
		return []block{rest}
	}
	cluster := block{
		zones:     append([]string{zoneName(c.ClusterDomain)}, reverseZones...),
		autopath:  true,
		upstreams: c.ClusterUpstreams,
	}
	return []block{cluster, rest}
}

// Corefile renders the configuration CoreDNS runs when no --conf is given:
// per listening port the blocks of blocks(), each bound to exactly that
// port's listen addresses (CoreDNS serves a port's zones on one listener
// per address, so every block of a port binds the same ones).
func (c *Config) Corefile() string {
	var b strings.Builder
	for _, p := range c.ports() {
		for _, blk := range c.blocks() {
			c.writeBlock(&b, p.port, p.binds, blk)
		}
	}
	return b.String()
}

// listenPort is a listening port and its addresses, in --listen order.
type listenPort struct {
	port  int
	binds []string
}

// ports groups the listen addresses by port, in port order.
func (c *Config) ports() []listenPort {
	byPort := map[int][]string{}
	for _, l := range c.listenAddrs() {
		host, port, _ := net.SplitHostPort(l)
		p, _ := strconv.Atoi(port)
		byPort[p] = append(byPort[p], host)
	}
	out := make([]listenPort, 0, len(byPort))
	for p, binds := range byPort {
		out = append(out, listenPort{p, binds})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].port < out[j].port })
	return out
}

func (c *Config) writeBlock(b *strings.Builder, port int, binds []string, blk block) {
	keys := make([]string, len(blk.zones))
	for i, z := range blk.zones {
		keys[i] = fmt.Sprintf("%s:%d", z, port)
	}
	fmt.Fprintf(b, "%s {\n", strings.Join(keys, " "))
	fmt.Fprintf(b, "    bind %s\n", strings.Join(binds, " "))
	b.WriteString("    errors\n")
	if c.Metrics != "" {
		fmt.Fprintf(b, "    prometheus %s\n", c.Metrics)
	}
	if blk.autopath {
		c.writeAutopath(b)
	}
	fmt.Fprintf(b, "    nodecache %s {\n", strings.Join(blk.upstreams, " "))
	b.WriteString("        success 9984\n        denial 9984 30\n        prefetch 10 1m 10%\n        serve_stale 1h\n")
	if c.Steer.Enabled() {
		// The programs leave these sockets alone (the upstream may be the
		// steered VIP itself).
		fmt.Fprintf(b, "        upstream_mark %#x\n", c.Steer.UpstreamMark)
	}
	size := c.CacheMaxBytes
	if size <= 0 {
		size = DefaultCacheMaxBytes
	}
	fmt.Fprintf(b, "        max_bytes %s\n", size.String())
	b.WriteString("    }\n}\n")
}

// writeAutopath writes k8s_autopath for the cluster domain, with only the
// options that differ from its defaults.
func (c *Config) writeAutopath(b *strings.Builder) {
	var opts []string
	if k := c.Kube.Kubeconfig; k != "" {
		opts = append(opts, "kubeconfig "+corefileToken(k))
	}
	if c.NodeName != "" {
		opts = append(opts, "node "+c.NodeName)
	}
	if c.Search != nil {
		opts = append(opts, strings.TrimSpace("search "+strings.Join(c.Search, " ")))
	}
	fmt.Fprintf(b, "    k8s_autopath %s", zoneName(c.ClusterDomain))
	if len(opts) == 0 {
		b.WriteString("\n")
		return
	}
	b.WriteString(" {\n")
	for _, o := range opts {
		fmt.Fprintf(b, "        %s\n", o)
	}
	b.WriteString("    }\n")
}

// corefileToken quotes s if the Corefile lexer would otherwise split it or
// read part of it as a comment or brace. Validate rejects what quoting
// cannot carry (quotes, backslashes).
func corefileToken(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || strings.ContainsRune("#{}", r) }) {
		return s
	}
	return `"` + s + `"`
}
