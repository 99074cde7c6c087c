// Package pvtz emulates Alibaba Cloud PrivateZone (product pvtz, API version
// 2018-01-01) on the shared OpenAPI core (cloud/openapi): zones, their VPC
// bindings, records and the change log, with the real service's request and
// response fields and its validation. Register adds it to a server; DNS
// answers the zones' records over DNS.
package pvtz

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"time"
)

// Version is the API version, Domain the endpoint.
const (
	Version = "2018-01-01"
	Domain  = "pvtz.aliyuncs.com"
)

// Record is one record (one value; pvtz has no record sets).
type Record struct {
	RecordId        int64
	Rr              string
	Type            string
	Value           string
	Ttl             int
	Priority        int
	Weight          int
	Line            string
	Status          string
	Remark          string
	CreateTimestamp int64
	UpdateTimestamp int64
}

// Vpc is a VPC bound to a zone.
type Vpc struct {
	VpcId    string
	RegionId string
	VpcType  string
}

// Zone is one private zone.
type Zone struct {
	ZoneId          string
	ZoneName        string
	Remark          string
	ProxyPattern    string
	ZoneType        string
	ResourceGroupId string
	CreateTimestamp int64
	UpdateTimestamp int64
	Vpcs            []Vpc
	Records         map[int64]*Record `json:"-"`
	order           []int64           // record ids, ascending
}

// ChangeLog is one audit entry.
type ChangeLog struct {
	Id            int64
	ZoneId        string
	EntityType    string // PV_ZONE or PV_RECORD
	EntityId      string
	EntityName    string
	OperAction    string // ADD, UPDATE, DELETE, ...
	OperObject    string
	Content       string
	OperTimestamp int64
	OperIp        string
	CreatorId     string
}

// Store holds the emulated account's PrivateZone state.
type Store struct {
	mu         sync.RWMutex
	zones      map[string]*Zone
	zoneOrder  []string
	nextRecord int64
	nextLog    int64
	logs       []ChangeLog
	now        func() time.Time
	// tokens: AddZone's ClientToken (per key id) → the zone it made and
	// the name asked for; a repeat answers with that zone.
	tokens map[string]zoneToken
}

type zoneToken struct{ ZoneID, Name string }

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{zones: map[string]*Zone{}, tokens: map[string]zoneToken{}, nextRecord: 1_000_000_000, nextLog: 1, now: time.Now}
}

func newZoneID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (z *Zone) insert(r *Record) {
	z.Records[r.RecordId] = r
	z.order = append(z.order, r.RecordId) // ids only grow
}

func (z *Zone) remove(id int64) {
	delete(z.Records, id)
	i := sort.Search(len(z.order), func(i int) bool { return z.order[i] >= id })
	if i < len(z.order) && z.order[i] == id {
		z.order = append(z.order[:i], z.order[i+1:]...)
	}
}

// records returns the zone's records in id order.
func (z *Zone) records() []*Record {
	out := make([]*Record, 0, len(z.order))
	for _, id := range z.order {
		out = append(out, z.Records[id])
	}
	return out
}

func (s *Store) findRecord(id int64) (*Zone, *Record) {
	for _, z := range s.zones {
		if r, ok := z.Records[id]; ok {
			return z, r
		}
	}
	return nil, nil
}

func (s *Store) addLog(z *Zone, entityType, entityID, entityName, action, content, ip, creator string) {
	s.logs = append(s.logs, ChangeLog{
		Id: s.nextLog, ZoneId: z.ZoneId, EntityType: entityType, EntityId: entityID, EntityName: entityName,
		OperAction: action, OperObject: strings.TrimPrefix(entityType, "PV_"), Content: content,
		OperTimestamp: s.now().UnixMilli(), OperIp: ip, CreatorId: creator,
	})
	s.nextLog++
	if len(s.logs) > 200_000 {
		s.logs = append(s.logs[:0], s.logs[100_000:]...)
	}
}

type snapshot struct {
	Zones      []*Zone
	Records    map[string][]*Record
	NextRecord int64
	NextLog    int64
	Logs       []ChangeLog
	Tokens     map[string]zoneToken `json:",omitempty"`
}

// Snapshot implements openapi.Stateful.
func (s *Store) Snapshot() (json.RawMessage, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := snapshot{Records: map[string][]*Record{}, NextRecord: s.nextRecord, NextLog: s.nextLog, Logs: s.logs, Tokens: s.tokens}
	for _, id := range s.zoneOrder {
		z := s.zones[id]
		snap.Zones = append(snap.Zones, z)
		snap.Records[id] = z.records()
	}
	return json.Marshal(snap)
}

// Restore implements openapi.Stateful.
func (s *Store) Restore(raw json.RawMessage) error {
	var snap snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones, s.zoneOrder = map[string]*Zone{}, nil
	for _, z := range snap.Zones {
		if z == nil || z.ZoneId == "" {
			continue
		}
		z.Records = map[int64]*Record{}
		z.order = nil
		recs := snap.Records[z.ZoneId]
		sort.Slice(recs, func(i, j int) bool { return recs[i].RecordId < recs[j].RecordId })
		for _, r := range recs {
			if r != nil {
				z.insert(r)
			}
		}
		s.zones[z.ZoneId] = z
		s.zoneOrder = append(s.zoneOrder, z.ZoneId)
	}
	s.nextRecord, s.nextLog, s.logs = max(snap.NextRecord, 1), max(snap.NextLog, 1), snap.Logs
	s.tokens = snap.Tokens
	if s.tokens == nil {
		s.tokens = map[string]zoneToken{}
	}
	return nil
}
