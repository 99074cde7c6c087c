// Package endpoint is the model shared by the sync's packages: what the
// cluster wants (Endpoint, one per record name and type, from source/) and
// what the zone has (Record, one per value, from provider/).
package endpoint

import (
	"net/netip"
	"sort"
	"strings"
)

// Endpoint is a desired record set: Name (relative to the zone, the pvtz
// Rr, "@" for the apex) and Type with its Targets, produced by Resource.
type Endpoint struct {
	Name     string
	Type     string // A, AAAA or CNAME
	Targets  []string
	TTL      int
	Resource string // "svc/<ns>/<name>" or "pod/<ns>/<name>"
	// Adopt: an identical record without an owner may be taken over.
	Adopt bool
}

// Record is one zone record (pvtz keeps one record per value).
type Record struct {
	ID       int64
	Name     string // Rr
	Type     string
	Value    string
	TTL      int
	Status   string // ENABLE or DISABLE
	Remark   string
	Priority int
}

// TypeOf returns A or AAAA for an IP address, "" otherwise.
func TypeOf(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	if a.Unmap().Is4() {
		return "A"
	}
	return "AAAA"
}

// NormalizeName lower-cases a record name and drops a trailing dot.
func NormalizeName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

// SortTargets sorts and de-duplicates targets in place and returns them.
func SortTargets(t []string) []string {
	sort.Strings(t)
	out := t[:0]
	for i, v := range t {
		if i == 0 || v != t[i-1] {
			out = append(out, v)
		}
	}
	return out
}
