package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// Buckets of the state file.
var (
	bucketAllocs = []byte("allocations") // containerID/ifName -> api.Allocation
	bucketENIs   = []byte("enis")        // ENI id -> eniRecord
	bucketOps    = []byte("ops")         // op id -> pendingOp
)

// eniRecord is what the agent remembers about an ENI it created.
type eniRecord struct {
	ID        string `json:"id"`
	Exclusive bool   `json:"exclusive"`
}

// pendingOp is a cloud call whose outcome is not yet in the pool. It is
// written before the call and removed after its result is recorded, so a
// restarted agent repeats it with the same ClientToken: ECS answers with
// what the first call created instead of creating more.
type pendingOp struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"` // "create" or "assign"
	VSwitchID string    `json:"vswitchID,omitempty"`
	ENIID     string    `json:"eniID,omitempty"`
	Count     int       `json:"count"`
	Exclusive bool      `json:"exclusive,omitempty"`
	Token     string    `json:"token"`
	Started   time.Time `json:"started"`
	// attempts: how often this agent ran it; notBefore: when it may run
	// again (not persisted).
	attempts  int
	notBefore time.Time
}

// Store is the agent's bbolt state.
type Store struct{ db *bolt.DB }

// OpenStore opens (creating) the state file.
func OpenStore(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketAllocs, bucketENIs, bucketOps} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) put(bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), b) })
}

func (s *Store) del(bucket []byte, keys ...string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, k := range keys {
			if err := tx.Bucket(bucket).Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
}

func list[T any](s *Store, bucket []byte) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			var t T
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("state %s/%s: %w", bucket, k, err)
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}

// PutAlloc records an allocation (before the agent answers the plugin).
func (s *Store) PutAlloc(a *api.Allocation) error { return s.put(bucketAllocs, a.Key.String(), a) }

// DelAllocs forgets allocations.
func (s *Store) DelAllocs(keys ...api.Key) error {
	ks := make([]string, len(keys))
	for i, k := range keys {
		ks[i] = k.String()
	}
	return s.del(bucketAllocs, ks...)
}

// Allocs lists the recorded allocations.
func (s *Store) Allocs() ([]api.Allocation, error) { return list[api.Allocation](s, bucketAllocs) }

// PutENI records an ENI the agent created.
func (s *Store) PutENI(r eniRecord) error { return s.put(bucketENIs, r.ID, r) }

// DelENI forgets an ENI.
func (s *Store) DelENI(id string) error { return s.del(bucketENIs, id) }

// ENIs lists the recorded ENIs.
func (s *Store) ENIs() ([]eniRecord, error) { return list[eniRecord](s, bucketENIs) }

// PutOp records a pending cloud call.
func (s *Store) PutOp(o pendingOp) error { return s.put(bucketOps, o.ID, o) }

// DelOp removes a finished cloud call.
func (s *Store) DelOp(id string) error { return s.del(bucketOps, id) }

// Ops lists pending cloud calls.
func (s *Store) Ops() ([]pendingOp, error) { return list[pendingOp](s, bucketOps) }
