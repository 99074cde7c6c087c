package openapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Fault kinds of a FaultRule ("before": the action did not run; "after":
// it ran, the change happened, and the client never learns it).
const (
	Fault503Before  = "503-before"
	FaultDropBefore = "drop-before"
	Fault503After   = "503-after"
	FaultDropAfter  = "drop-after"
	FaultError      = "error" // an API error answer (Code, HTTPStatus, Message); the action does not run
)

// FaultRule scripts faults: the next Times requests of Action get Fault,
// then the action behaves again. Rules are consumed in the order added.
type FaultRule struct {
	Action     string `json:"action"` // "" = any action
	Fault      string `json:"fault"`
	Code       string `json:"code,omitempty"`        // FaultError: e.g. Forbidden.RAM
	HTTPStatus int    `json:"http_status,omitempty"` // FaultError; default 400 (403 for Forbidden*)
	Message    string `json:"message,omitempty"`
	Times      int    `json:"times,omitempty"` // default 1
}

func (r *FaultRule) normalize() error {
	switch r.Fault {
	case Fault503Before, FaultDropBefore, Fault503After, FaultDropAfter:
	case FaultError:
		if r.Code == "" {
			return fmt.Errorf("fault rule for %q: error needs a code", r.Action)
		}
		if r.HTTPStatus == 0 {
			r.HTTPStatus = http.StatusBadRequest
			if strings.HasPrefix(r.Code, "Forbidden") || r.Code == "NoPermission" {
				r.HTTPStatus = http.StatusForbidden
			}
		}
		if r.Message == "" {
			r.Message = "Injected fault " + r.Code + "."
		}
	default:
		return fmt.Errorf("fault rule for %q: unknown fault %q (want 503-before, drop-before, 503-after, drop-after, error)", r.Action, r.Fault)
	}
	if r.Times <= 0 {
		r.Times = 1
	}
	return nil
}

// ParseFaultRule reads ACTION=FAULT[:CODE[:HTTP]][*N], e.g.
// "BindZoneVpc=error:Forbidden.RAM:403*3" or "AddZone=drop-after".
func ParseFaultRule(s string) (FaultRule, error) {
	var r FaultRule
	action, spec, ok := strings.Cut(s, "=")
	if !ok {
		return r, fmt.Errorf("fault %q: want ACTION=FAULT[:CODE[:HTTP]][*N]", s)
	}
	r.Action = action
	spec, n, counted := strings.Cut(spec, "*")
	if counted {
		t, err := strconv.Atoi(n)
		if err != nil || t <= 0 {
			return r, fmt.Errorf("fault %q: count %q", s, n)
		}
		r.Times = t
	}
	parts := strings.Split(spec, ":")
	r.Fault = parts[0]
	if len(parts) > 1 {
		r.Code = parts[1]
	}
	if len(parts) > 2 {
		st, err := strconv.Atoi(parts[2])
		if err != nil {
			return r, fmt.Errorf("fault %q: HTTP status %q", s, parts[2])
		}
		r.HTTPStatus = st
	}
	return r, r.normalize()
}

// AddFaultRules scripts faults on a running server.
func (s *Server) AddFaultRules(rules ...FaultRule) error {
	for i := range rules {
		if err := rules[i].normalize(); err != nil {
			return err
		}
	}
	s.limMu.Lock()
	s.rules = append(s.rules, rules...)
	s.limMu.Unlock()
	return nil
}

// ClearFaultRules drops the scripted faults not yet used.
func (s *Server) ClearFaultRules() {
	s.limMu.Lock()
	s.rules = nil
	s.limMu.Unlock()
}

// takeRule consumes one use of the first rule matching action.
func (s *Server) takeRule(action string) *FaultRule {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	for i := range s.rules {
		r := &s.rules[i]
		if r.Action != "" && r.Action != action {
			continue
		}
		got := *r
		if r.Times--; r.Times <= 0 {
			s.rules = append(s.rules[:i], s.rules[i+1:]...)
		}
		return &got
	}
	return nil
}

// serveFaults: POST a JSON array of rules to add them, DELETE to clear,
// GET to list the rules left.
func (s *Server) serveFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		var rules []FaultRule
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&rules); err != nil {
			http.Error(w, "rules: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.AddFaultRules(rules...); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	case http.MethodDelete:
		s.ClearFaultRules()
	case http.MethodGet:
	default:
		http.Error(w, "GET, POST or DELETE", http.StatusMethodNotAllowed)
		return
	}
	s.limMu.Lock()
	left := append([]FaultRule{}, s.rules...)
	s.limMu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(left)
}
