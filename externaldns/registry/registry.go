// Package registry marks the records the sync owns, in the record itself.
//
// Choice: PrivateZone keeps a Remark (≤ 50 characters) on every record, set
// by AddZoneRecord in the same call that creates the record and changed with
// UpdateRecordRemark. The sync writes its ownership there:
//
//	ed;o=<owner id>;r=<kind>/<namespace>/<name>
//
// (kind svc or pod; a resource that does not fit is shortened to a prefix
// plus "~" and 8 hex digits of its SHA-256). Compared with ExternalDNS's TXT
// registry (a second record "a-<name>" per name holding
// "heritage=external-dns,external-dns/owner=...,external-dns/resource=..."):
//
//   - one API call per change instead of two: a create carries its owner, so
//     there is never a record without its ownership marker, nor a marker
//     without its record, after a crash between two calls;
//   - ownership is per value (pvtz has one record per value), so two owners'
//     values under one name stay apart;
//   - the zone is not doubled with TXT records, so a full listing costs half
//     the pages;
//   - the price: ExternalDNS instances cannot read it. Running ExternalDNS and
//     pvtz-sync on one zone needs distinct names (or ExternalDNS's records are
//     simply "unowned" to pvtz-sync, which then never touches them).
//
// Records whose Remark does not parse are unowned; the sync never updates
// or deletes them, and adopts an identical one only when its resource asks
// (annotation dnsaccel.io/pvtz-adopt: "true").
package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// MaxRemark is PrivateZone's Remark limit; MaxOwnerID keeps room for the
// resource.
const (
	MaxRemark  = 50
	MaxOwnerID = 16
	prefix     = "ed;o="
)

var ownerRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`)

// ValidateOwnerID checks an owner id: 1..16 of [a-z0-9._-], starting and
// ending with a letter or digit.
func ValidateOwnerID(id string) error {
	if len(id) == 0 || len(id) > MaxOwnerID || !ownerRE.MatchString(id) {
		return fmt.Errorf("owner id %q: want 1 to %d characters of a-z, 0-9, '.', '_', '-' (it is written into each record's %d-character Remark)", id, MaxOwnerID, MaxRemark)
	}
	return nil
}

// Remark returns the ownership remark for owner and resource, at most
// MaxRemark characters.
func Remark(owner, resource string) string {
	r := prefix + owner + ";r=" + resource
	if len(r) <= MaxRemark {
		return r
	}
	sum := sha256.Sum256([]byte(resource))
	tail := "~" + hex.EncodeToString(sum[:4])
	keep := MaxRemark - len(prefix+owner+";r=") - len(tail)
	if keep < 0 {
		keep = 0
	}
	return prefix + owner + ";r=" + resource[:keep] + tail
}

// Parse returns the owner and resource of a remark; ok is false when the
// remark is not an ownership marker.
func Parse(remark string) (owner, resource string, ok bool) {
	rest, found := strings.CutPrefix(remark, prefix)
	if !found {
		return "", "", false
	}
	owner, resource, found = strings.Cut(rest, ";r=")
	if !found || !ownerRE.MatchString(owner) || resource == "" {
		return "", "", false
	}
	return owner, resource, true
}

// SameResource reports whether a remark's resource field denotes resource
// (exactly, or its shortened form).
func SameResource(owner, remarkResource, resource string) bool {
	if remarkResource == resource {
		return true
	}
	_, r, _ := Parse(Remark(owner, resource))
	return r == remarkResource
}

// Namespace returns the namespace of a resource "kind/ns/name" (possibly
// shortened), "" when unknown.
func Namespace(resource string) string {
	parts := strings.SplitN(resource, "/", 3)
	if len(parts) < 3 {
		return ""
	}
	return parts[1]
}
