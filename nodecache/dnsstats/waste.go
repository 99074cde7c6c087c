package dnsstats

import (
	"bytes"
	"strings"
)

// Search-path waste: an NXDOMAIN answer to a pod for <name>.<domain>, where
// <domain> is one of the pod's search domains (the kubelet's
// "<ns>.svc.<cluster>", "svc.<cluster>", "<cluster>", then the node's), is
// a candidate of glibc's search walk that found nothing: the queries
// k8s_autopath saves when it expands the walk in node-cache, or would save
// for pods it leaves alone (custom dnsConfig). A pod asking for a missing
// name under its search domains on purpose counts too: the figure is an
// upper bound of the walk's cost, exact for the usual traffic.

type searchDomains struct {
	svc  []byte   // wire "svc.<cluster>" with its root label
	rest [][]byte // wire "<cluster>", then the node's domains
}

func newSearchDomains(cluster string, node []string) *searchDomains {
	sd := &searchDomains{svc: textToWire("svc." + cluster)}
	sd.rest = append(sd.rest, textToWire(cluster))
	for _, d := range node {
		if w := textToWire(d); len(w) > 1 {
			sd.rest = append(sd.rest, w)
		}
	}
	return sd
}

// wasted reports whether name (lower-cased wire) is a search candidate of
// a pod in namespace ns.
func (sd *searchDomains) wasted(name []byte, ns string) bool {
	if len(name) < 2 || ns == "" {
		return false
	}
	// Every label boundary past the first label: <prefix>.<suffix>.
	for i := int(name[0]) + 1; i < len(name) && name[i] != 0; i += int(name[i]) + 1 {
		suf := name[i:]
		if bytes.Equal(suf, sd.svc) {
			return true // <prefix>.svc.<cluster>
		}
		// <prefix>.<ns>.svc.<cluster>
		if l := int(suf[0]); l == len(ns) && len(suf) > l+1 && string(suf[1:1+l]) == ns && bytes.Equal(suf[1+l:], sd.svc) {
			return true
		}
		for _, d := range sd.rest {
			if bytes.Equal(suf, d) {
				return true
			}
		}
	}
	return false
}

// textToWire is a name in lower-case wire format ("" and "." give the
// root); labels over 63 bytes are cut.
func textToWire(s string) []byte {
	s = strings.ToLower(strings.Trim(s, "."))
	var out []byte
	if s != "" {
		for _, l := range strings.Split(s, ".") {
			if len(l) > 63 {
				l = l[:63]
			}
			out = append(out, byte(len(l)))
			out = append(out, l...)
		}
	}
	return append(out, 0)
}
