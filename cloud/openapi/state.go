package openapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// persistDelay coalesces writes: state is saved at most this often while
// write actions keep coming, and always on Close.
const persistDelay = 100 * time.Millisecond

// Load restores every registered Stateful product from Config.StateFile. A
// missing file is not an error (first start).
func (s *Server) Load() error {
	if s.cfg.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state %s: %w", s.cfg.StateFile, err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return fmt.Errorf("parse state %s: %w", s.cfg.StateFile, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.products {
		if p.State == nil {
			continue
		}
		if raw, ok := all[p.Name]; ok {
			if err := p.State.Restore(raw); err != nil {
				return fmt.Errorf("restore %s from %s: %w", p.Name, s.cfg.StateFile, err)
			}
		}
	}
	return nil
}

// Save writes the state file now (atomically: temp file, fsync, rename).
func (s *Server) Save() error {
	if s.cfg.StateFile == "" {
		return nil
	}
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	all := map[string]json.RawMessage{}
	s.mu.RLock()
	for _, p := range s.products {
		if p.State == nil {
			continue
		}
		raw, err := p.State.Snapshot()
		if err != nil {
			s.mu.RUnlock()
			return fmt.Errorf("snapshot %s: %w", p.Name, err)
		}
		all[p.Name] = raw
	}
	s.mu.RUnlock()
	b, err := json.Marshal(all)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir := filepath.Dir(s.cfg.StateFile)
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("write state %s: %w", s.cfg.StateFile, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, s.cfg.StateFile)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write state %s: %w", s.cfg.StateFile, werr)
	}
	return nil
}

// MarkDirty asks for the state to be saved soon (products that change state
// outside a Write action call it).
func (s *Server) MarkDirty() { s.markDirty() }

func (s *Server) markDirty() {
	if s.cfg.StateFile == "" {
		return
	}
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

func (s *Server) persistLoop() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.dirty:
		}
		t := time.NewTimer(persistDelay)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.Save(); err != nil {
			s.log.Error("persist state", "err", err)
		}
	}
}

// Close stops the persistence loop and saves the state one last time.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		err = s.Save()
	})
	return err
}
