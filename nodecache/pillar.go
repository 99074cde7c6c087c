package nodecache

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
)

// node-local-dns's ConfigMap holds a Corefile with __PILLAR__ placeholders
// that its binary fills in at start; node-cache fills in the same ones, so a
// --conf in that shape (manifests/base/node-cache/configmap.yaml) works.
var pillarToken = regexp.MustCompile(`__PILLAR__(?:[A-Z0-9]+__)+`)

// pillars are the placeholders node-cache knows, with the flag that sets
// each (for the error when one has no value).
func (c *Config) pillars() map[string]struct{ value, flag string } {
	strip := func(addrs []string) string {
		// node-local-dns's values are bare IPs; ours may carry ports,
		// which bind does not take.
		out := make([]string, 0, len(addrs))
		for _, a := range addrs {
			if h, _, err := net.SplitHostPort(a); err == nil {
				a = h
			}
			out = append(out, a)
		}
		return strings.Join(out, " ")
	}
	return map[string]struct{ value, flag string }{
		"__PILLAR__LOCAL__DNS__":        {strip(c.Steer.LocalIPs), "--local-ip"},
		"__PILLAR__DNS__SERVER__":       {strip(c.Steer.ClusterDNS), "--cluster-dns (or the kube-dns Service)"},
		"__PILLAR__CLUSTER__DNS__":      {strings.Join(c.ClusterUpstreams, " "), "--cluster-upstream (or the kube-dns-upstream Service)"},
		"__PILLAR__UPSTREAM__SERVERS__": {strings.Join(c.Upstreams, " "), "--upstream (or --resolv-conf)"},
		"__PILLAR__DNS__DOMAIN__":       {strings.TrimSuffix(c.ClusterDomain, "."), "--cluster-domain"},
	}
}

// ConfUses reports whether the --conf Corefile holds the placeholder tok
// (e.g. "__PILLAR__CLUSTER__DNS__"), whose value node-cache must then find
// as it does for the Corefile it generates. False without --conf or when the
// file cannot be read (loading it reports that).
func (c *Config) ConfUses(tok string) bool {
	if c.Conf == "" {
		return false
	}
	b, err := os.ReadFile(c.Conf)
	return err == nil && strings.Contains(string(b), tok)
}

// fillPillars replaces the placeholders of a node-local-dns-style Corefile.
// A placeholder node-cache does not know, or one without a value, is an
// error naming it, rather than a Corefile CoreDNS rejects later.
func (c *Config) fillPillars(corefile string) (string, error) {
	known := c.pillars()
	var errs []string
	out := pillarToken.ReplaceAllStringFunc(corefile, func(tok string) string {
		p, ok := known[tok]
		switch {
		case !ok:
			errs = append(errs, fmt.Sprintf("%s is not a placeholder node-cache fills in", tok))
		case p.value == "":
			errs = append(errs, fmt.Sprintf("%s has no value: set %s", tok, p.flag))
		}
		return p.value
	})
	if len(errs) > 0 {
		return "", fmt.Errorf("--conf %s: %s", c.Conf, strings.Join(dedupe(errs), "; "))
	}
	return out, nil
}

func dedupe(ss []string) []string {
	seen := map[string]bool{}
	out := ss[:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
