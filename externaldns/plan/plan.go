// Package plan computes the changes that take a zone's records (current)
// to what the cluster wants (desired), for one record name or many, under a
// policy and an owner: it never changes a record another owner (or nobody)
// holds, except adopting an identical unowned one when the resource asks.
package plan

import (
	"fmt"
	"sort"
	"strings"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// Policy is what the sync may do, as ExternalDNS's --policy.
type Policy string

const (
	Sync       Policy = "sync"        // create, update, delete
	UpsertOnly Policy = "upsert-only" // create, update
	CreateOnly Policy = "create-only" // create
)

// ParsePolicy validates a --policy value.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case Sync, UpsertOnly, CreateOnly:
		return p, nil
	}
	return "", fmt.Errorf("policy %q: want sync, upsert-only or create-only", s)
}

// Op is one kind of API write.
type Op string

const (
	Create Op = "create" // AddZoneRecord (Remark set in the same call)
	Update Op = "update" // UpdateZoneRecord (TTL)
	Remark Op = "remark" // UpdateRecordRemark (owner's resource changed)
	Adopt  Op = "adopt"  // UpdateRecordRemark on an identical unowned record
	Enable Op = "enable" // SetZoneRecordStatus ENABLE (disabled by hand)
	Delete Op = "delete" // DeleteZoneRecord
)

// Change is one write. Record holds the record as it will be (ID set for
// everything but Create); Old the record as it is (nil for Create).
type Change struct {
	Op       Op
	Record   endpoint.Record
	Old      *endpoint.Record
	Resource string
	Adopt    bool // Create: on a conflict, an identical unowned record may be adopted
}

func (c Change) String() string {
	r := c.Record
	s := fmt.Sprintf("%-6s %s %s %s ttl=%d", strings.ToUpper(string(c.Op)), r.Name, r.Type, r.Value, r.TTL)
	if c.Old != nil && c.Op == Update {
		s += fmt.Sprintf(" (was ttl=%d)", c.Old.TTL)
	}
	if c.Resource != "" {
		s += " resource=" + c.Resource
	}
	if r.ID != 0 {
		s += fmt.Sprintf(" id=%d", r.ID)
	}
	return s
}

// Conflict is a desired value the sync may not write: the name or value is
// held by another owner or by nobody.
type Conflict struct {
	Name, Type, Value, Resource string
	Reason                      string
}

func (c Conflict) String() string {
	return fmt.Sprintf("%s %s %s (%s): %s", c.Name, c.Type, c.Value, c.Resource, c.Reason)
}

// Input to Calculate.
type Input struct {
	OwnerID string
	Policy  Policy
	Desired []endpoint.Endpoint
	Current []endpoint.Record
	// AllowDeletes is false when the desired state cannot be trusted to be
	// complete (an empty source, informers not synced): nothing is deleted.
	AllowDeletes bool
}

// Result of Calculate.
type Result struct {
	Changes   []Change
	Conflicts []Conflict
	// Suppressed counts changes the policy (or AllowDeletes) held back.
	Suppressed int
	// Names is every name looked at, sorted.
	Names []string
}

type want struct {
	ttl      int
	resource string
	adopt    bool
}

// Calculate plans every name that appears in Desired or Current. Changes
// are ordered by name, then deletes, updates, creates (so a CNAME owned by
// us is gone before an A takes its name).
func Calculate(in Input) Result {
	desired := map[string]map[string]map[string]want{} // name → type → value → want
	for _, ep := range in.Desired {
		name := endpoint.NormalizeName(ep.Name)
		if desired[name] == nil {
			desired[name] = map[string]map[string]want{}
		}
		byType := desired[name]
		if byType[ep.Type] == nil {
			byType[ep.Type] = map[string]want{}
		}
		for _, v := range ep.Targets {
			v = normValue(ep.Type, v)
			if old, ok := byType[ep.Type][v]; ok && old.resource <= ep.Resource {
				continue // the smallest resource name holds a shared value
			}
			byType[ep.Type][v] = want{ttl: ep.TTL, resource: ep.Resource, adopt: ep.Adopt}
		}
	}
	current := map[string][]endpoint.Record{}
	for _, r := range in.Current {
		n := endpoint.NormalizeName(r.Name)
		current[n] = append(current[n], r)
	}
	names := make([]string, 0, len(desired)+len(current))
	for n := range desired {
		names = append(names, n)
	}
	for n := range current {
		if _, ok := desired[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	res := Result{Names: names}
	for _, n := range names {
		planName(&res, in, n, desired[n], current[n])
	}
	return res
}

func normValue(typ, v string) string {
	v = strings.TrimSpace(v)
	if typ == "CNAME" {
		return strings.TrimSuffix(strings.ToLower(v), ".")
	}
	return v
}

func (w want) remark(owner string) string { return registry.Remark(owner, w.resource) }

func planName(res *Result, in Input, name string, desired map[string]map[string]want, current []endpoint.Record) {
	// CNAME cannot share a name: with A/AAAA wanted too, the CNAME loses.
	if len(desired["CNAME"]) > 0 && (len(desired["A"]) > 0 || len(desired["AAAA"]) > 0) {
		for v, w := range desired["CNAME"] {
			res.Conflicts = append(res.Conflicts, Conflict{name, "CNAME", v, w.resource, "a CNAME cannot share its name with A/AAAA records"})
		}
		delete(desired, "CNAME")
	}
	var owned, others []endpoint.Record
	for _, r := range current {
		if o, _, ok := registry.Parse(r.Remark); ok && o == in.OwnerID {
			owned = append(owned, r)
		} else {
			others = append(others, r)
		}
	}
	sort.Slice(owned, func(i, j int) bool { return owned[i].ID < owned[j].ID })
	var deletes, updates, creates []Change
	allow := func(op Op) bool {
		ok := in.Policy == Sync || in.Policy == UpsertOnly && op != Delete || in.Policy == CreateOnly && op == Create
		if op == Delete && !in.AllowDeletes {
			ok = false
		}
		if !ok {
			res.Suppressed++
		}
		return ok
	}

	seen := map[string]bool{}
	for _, r := range owned {
		key := r.Type + "\x00" + normValue(r.Type, r.Value)
		w, wanted := desired[r.Type][normValue(r.Type, r.Value)]
		if !wanted || seen[key] {
			if allow(Delete) {
				old := r
				deletes = append(deletes, Change{Op: Delete, Record: r, Old: &old, Resource: resourceOf(r)})
			}
			continue
		}
		seen[key] = true
		if r.TTL != w.ttl && allow(Update) {
			old, nr := r, r
			nr.TTL = w.ttl
			updates = append(updates, Change{Op: Update, Record: nr, Old: &old, Resource: w.resource})
		}
		if _, res0, _ := registry.Parse(r.Remark); !registry.SameResource(in.OwnerID, res0, w.resource) && allow(Remark) {
			old, nr := r, r
			nr.Remark = w.remark(in.OwnerID)
			updates = append(updates, Change{Op: Remark, Record: nr, Old: &old, Resource: w.resource})
		}
		if r.Status == "DISABLE" && allow(Enable) {
			old, nr := r, r
			nr.Status = "ENABLE"
			updates = append(updates, Change{Op: Enable, Record: nr, Old: &old, Resource: w.resource})
		}
	}

	types := make([]string, 0, len(desired))
	for t := range desired {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, typ := range types {
		values := make([]string, 0, len(desired[typ]))
		for v := range desired[typ] {
			values = append(values, v)
		}
		sort.Strings(values)
		for _, v := range values {
			w := desired[typ][v]
			if seen[typ+"\x00"+v] {
				continue
			}
			// Held by someone else?
			var same *endpoint.Record
			blocked := ""
			for i, o := range others {
				switch {
				case o.Type == typ && normValue(typ, o.Value) == v:
					same = &others[i]
				case typ == "CNAME":
					blocked = fmt.Sprintf("the name has a %s record (id %d) the sync does not own", o.Type, o.ID)
				case o.Type == "CNAME":
					blocked = fmt.Sprintf("the name is a CNAME (id %d) the sync does not own", o.ID)
				}
			}
			if same != nil {
				owner, _, owned := registry.Parse(same.Remark)
				switch {
				case owned:
					res.Conflicts = append(res.Conflicts, Conflict{name, typ, v, w.resource, fmt.Sprintf("record id %d is owned by %q", same.ID, owner)})
				case !w.adopt:
					res.Conflicts = append(res.Conflicts, Conflict{name, typ, v, w.resource, fmt.Sprintf("an identical record (id %d) exists without an owner; annotate the resource dnsaccel.io/pvtz-adopt=true to adopt it", same.ID)})
				case allow(Adopt):
					old, nr := *same, *same
					nr.Remark = w.remark(in.OwnerID)
					nr.TTL = w.ttl
					updates = append(updates, Change{Op: Adopt, Record: nr, Old: &old, Resource: w.resource})
					if same.TTL != w.ttl {
						updates = append(updates, Change{Op: Update, Record: nr, Old: &old, Resource: w.resource})
					}
				}
				continue
			}
			if blocked != "" {
				res.Conflicts = append(res.Conflicts, Conflict{name, typ, v, w.resource, blocked})
				continue
			}
			if allow(Create) {
				creates = append(creates, Change{Op: Create, Resource: w.resource, Adopt: w.adopt, Record: endpoint.Record{
					Name: name, Type: typ, Value: v, TTL: w.ttl, Status: "ENABLE", Remark: w.remark(in.OwnerID)}})
			}
		}
	}
	res.Changes = append(res.Changes, deletes...)
	res.Changes = append(res.Changes, updates...)
	res.Changes = append(res.Changes, creates...)
}

func resourceOf(r endpoint.Record) string {
	_, res, _ := registry.Parse(r.Remark)
	return res
}

// Counts returns how many changes of each op a result holds.
func (r Result) Counts() map[Op]int {
	m := map[Op]int{}
	for _, c := range r.Changes {
		m[c.Op]++
	}
	return m
}
