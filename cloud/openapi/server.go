package openapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Handler answers one action.
type Handler func(ctx context.Context, r *Request) (any, error)

// Action is one API action of a product.
type Action struct {
	Handler Handler
	// Write marks actions that change state.
	Write bool
}

// Stateful is what a product implements to be persisted with --state.
type Stateful interface {
	// Snapshot returns the product's state as JSON.
	Snapshot() (json.RawMessage, error)
	// Restore replaces the product's state with a snapshot.
	Restore(json.RawMessage) error
}

// Product is one cloud product (pvtz, ecs) served by the Server.
type Product struct {
	Name    string // product code, lower case ("pvtz")
	Version string // API version ("2018-01-01")
	Domain  string // its endpoint host, used as HostId
	Actions map[string]Action
	State   Stateful // optional
}

// Credential is an accepted AccessKey (or STS token when SecurityToken is set).
type Credential struct {
	AccessKeyID     string
	AccessKeySecret string
	SecurityToken   string
	Expiration      time.Time // zero: never
}

// Config configures a Server.
type Config struct {
	Credentials []Credential
	StateFile   string  // "" = memory only
	ThrottleQPS float64 // per action; 0 = unlimited
	FaultRate   float64 // fraction in [0,1]
	// ThrottleRate is a fraction of requests answered Throttling.User
	// whatever the rate (tests of retry paths).
	ThrottleRate float64
	Latency      time.Duration // added to every RPC
	RequestLog   io.Writer     // JSON lines; nil = memory only
	Logger       *slog.Logger
	// MaxSkew bounds |Timestamp - now|; default 15 minutes.
	MaxSkew time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Rand returns a float in [0,1) for fault decisions (tests); default math/rand.
	Rand func() float64
	// LogCapacity bounds the in-memory request log (default 1,000,000).
	LogCapacity int
	// Faults are scripted faults in place from the start (AddFaultRules).
	Faults []FaultRule
}

// Server is the OpenAPI emulator's HTTP handler.
type Server struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	mu       sync.RWMutex
	products []*Product
	creds    map[string]Credential

	nonceMu sync.Mutex
	nonces  map[string]time.Time
	lastGC  time.Time

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter
	rules    []FaultRule // scripted faults (limMu)

	reqLog *requestLog

	persistMu sync.Mutex
	dirty     chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New returns a Server; call Register for each product, then Load (if a
// state file is configured), then serve it, and Close at the end.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = 15 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = mrand.Float64
	}
	if cfg.LogCapacity <= 0 {
		cfg.LogCapacity = 1_000_000
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		mux:      http.NewServeMux(),
		creds:    map[string]Credential{},
		nonces:   map[string]time.Time{},
		limiters: map[string]*rate.Limiter{},
		reqLog:   newRequestLog(cfg.LogCapacity, cfg.RequestLog),
		dirty:    make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, c := range cfg.Credentials {
		s.creds[c.AccessKeyID] = c
	}
	for _, r := range cfg.Faults {
		if err := r.normalize(); err != nil {
			s.log.Error("fault rule ignored", "err", err)
			continue
		}
		s.rules = append(s.rules, r)
	}
	s.mux.HandleFunc("/_emulator/requests", s.serveRequests)
	s.mux.HandleFunc("/_emulator/stats", s.serveStats)
	s.mux.HandleFunc("/_emulator/faults", s.serveFaults)
	s.mux.HandleFunc("/_emulator/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	s.mux.HandleFunc("/", s.serveRPC)
	go s.persistLoop()
	return s
}

// Register adds a product. Version+Host routing must stay unambiguous: two
// products may share a version only if their names differ.
func (s *Server) Register(p *Product) error {
	if p == nil || p.Name == "" || p.Version == "" || len(p.Actions) == 0 {
		return errors.New("register product: name, version and actions are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.products {
		if q.Name == p.Name {
			return fmt.Errorf("register product %s: already registered", p.Name)
		}
	}
	s.products = append(s.products, p)
	return nil
}

// AddCredential accepts another key (e.g. an STS token minted by a metadata
// endpoint). An existing key id is replaced.
func (s *Server) AddCredential(c Credential) {
	s.mu.Lock()
	s.creds[c.AccessKeyID] = c
	s.mu.Unlock()
}

// SetFaults changes the throttle and the fault rate of a running server
// (tests set up state first, then turn faults on).
func (s *Server) SetFaults(throttleQPS, faultRate, throttleRate float64) {
	s.limMu.Lock()
	s.cfg.ThrottleQPS, s.cfg.FaultRate, s.cfg.ThrottleRate = throttleQPS, faultRate, throttleRate
	s.limiters = map[string]*rate.Limiter{}
	s.limMu.Unlock()
}

func (s *Server) throttleRate() float64 {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	return s.cfg.ThrottleRate
}

func (s *Server) faultRate() float64 {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	return s.cfg.FaultRate
}

// Handle mounts a non-RPC handler (e.g. instance metadata) on the server.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Log returns the request log entries from index since on, and the next index.
func (s *Server) Log(since int) ([]Entry, int) { return s.reqLog.since(since) }

// Stats returns request counts.
func (s *Server) Stats() Stats { return s.reqLog.stats() }

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := strings.ToUpper(hex.EncodeToString(b[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func (s *Server) product(version, host string) *Product {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var match []*Product
	for _, p := range s.products {
		if p.Version == version {
			match = append(match, p)
		}
	}
	if len(match) == 1 {
		return match[0]
	}
	label := strings.ToLower(host)
	if i := strings.IndexByte(label, '.'); i >= 0 {
		label = label[:i]
	}
	for _, p := range match {
		if strings.HasPrefix(label, p.Name) {
			return p
		}
	}
	return nil
}

func (s *Server) serveRPC(w http.ResponseWriter, hr *http.Request) {
	start := s.cfg.Now()
	req := &Request{Method: hr.Method, RequestID: newRequestID(), RemoteAddr: hr.RemoteAddr, Format: "JSON"}
	ent := Entry{Time: start.UTC(), RequestID: req.RequestID, Method: hr.Method, Remote: hr.RemoteAddr}
	domain := hostOnly(hr.Host)

	respond := func(status int, body []byte, ctype string) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("x-acs-request-id", req.RequestID)
		w.WriteHeader(status)
		_, _ = w.Write(body)
		ent.Status = status
	}
	fail := func(e *Error) {
		ent.Code = e.Code
		body, ctype := encodeError(req.Format, req.RequestID, domain, e)
		respond(e.HTTPStatus, body, ctype)
	}
	defer func() {
		ent.DurationMS = float64(s.cfg.Now().Sub(start).Microseconds()) / 1000
		s.reqLog.add(ent)
	}()

	if hr.Method != http.MethodGet && hr.Method != http.MethodPost {
		fail(Errorf(http.StatusMethodNotAllowed, "UnsupportedHTTPMethod", "This http method is not supported."))
		return
	}
	var body []byte
	if hr.Body != nil {
		b, err := io.ReadAll(io.LimitReader(hr.Body, maxBody+1))
		if err != nil {
			fail(Errorf(http.StatusBadRequest, "InvalidParameter", "read body: %v", err))
			return
		}
		if len(b) > maxBody {
			fail(Errorf(http.StatusRequestEntityTooLarge, "InvalidParameter", "request body too large"))
			return
		}
		body = b
	}
	params, err := ParseParams(hr.URL.RawQuery, hr.Header.Get("Content-Type"), body)
	if err != nil {
		fail(Errorf(http.StatusBadRequest, "InvalidParameter", "malformed parameters: %v", err))
		return
	}
	req.Params = params
	if f := strings.ToUpper(params["Format"]); f == "XML" {
		req.Format = "XML"
	}
	req.Action, req.Version = params["Action"], params["Version"]
	req.AccessKeyID, req.RegionID = params["AccessKeyId"], params["RegionId"]
	ent.Action, ent.Version, ent.AccessKeyID = req.Action, req.Version, req.AccessKeyID

	for _, k := range []string{"Action", "Version", "AccessKeyId", "Signature", "SignatureNonce", "Timestamp"} {
		if params[k] == "" {
			fail(MissingParameter(k))
			return
		}
	}
	if e := s.verify(hr.Method, params); e != nil {
		fail(e)
		return
	}
	p := s.product(req.Version, hr.Host)
	if p == nil {
		fail(Errorf(http.StatusBadRequest, "InvalidVersion", "Specified parameter Version is not valid."))
		return
	}
	req.Product, ent.Product = p.Name, p.Name
	if domain == "" {
		domain = p.Domain
	}
	act, ok := p.Actions[req.Action]
	if !ok {
		fail(Errorf(http.StatusNotFound, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."))
		return
	}
	ent.Write = act.Write
	ent.Params = req.ActionParams()

	if s.cfg.Latency > 0 {
		t := time.NewTimer(s.cfg.Latency)
		select {
		case <-t.C:
		case <-hr.Context().Done():
			t.Stop()
			ent.Fault = "client-gone"
			return
		}
	}
	if !s.limiter(p.Name+"/"+req.Action).Allow() || s.throttleRate() > 0 && s.cfg.Rand() < s.throttleRate() {
		ent.Fault = "throttled"
		fail(errThrottling())
		return
	}
	// Faults: 503 or a dropped connection, before or after the action ran
	// (after = the change happened but the client never learns it).
	fault := ""
	if rule := s.takeRule(req.Action); rule != nil {
		if rule.Fault == FaultError {
			ent.Fault = "error"
			fail(Errorf(rule.HTTPStatus, rule.Code, "%s", rule.Message))
			return
		}
		fault = rule.Fault
	} else if fr := s.faultRate(); fr > 0 && s.cfg.Rand() < fr {
		fault = [...]string{"503-before", "drop-before", "503-after", "drop-after"}[int(s.cfg.Rand()*4)%4]
	}
	ent.Fault = fault
	if fault == "503-before" {
		fail(errUnavailable())
		return
	}
	if fault == "drop-before" {
		drop(w)
		ent.Status = 0
		return
	}

	resp, herr := safeCall(act.Handler, hr.Context(), req)
	if herr == nil && act.Write {
		s.markDirty()
	}
	switch fault {
	case "503-after":
		fail(errUnavailable())
		return
	case "drop-after":
		drop(w)
		ent.Status = 0
		return
	}
	if herr != nil {
		var e *Error
		if !errors.As(herr, &e) {
			s.log.Error("action failed", "product", p.Name, "action", req.Action, "err", herr)
			e = errInternal()
		}
		fail(e)
		return
	}
	out, ctype, err := encodeResponse(req.Format, req.Action, req.RequestID, resp)
	if err != nil {
		s.log.Error("encode response", "action", req.Action, "err", err)
		fail(errInternal())
		return
	}
	respond(http.StatusOK, out, ctype)
}

func safeCall(h Handler, ctx context.Context, r *Request) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in %s: %v", r.Action, p)
		}
	}()
	return h(ctx, r)
}

func drop(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

func (s *Server) limiter(key string) *rate.Limiter {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	l, ok := s.limiters[key]
	if !ok {
		if s.cfg.ThrottleQPS <= 0 {
			l = rate.NewLimiter(rate.Inf, 1)
		} else {
			l = rate.NewLimiter(rate.Limit(s.cfg.ThrottleQPS), int(math.Max(1, math.Ceil(s.cfg.ThrottleQPS))))
		}
		s.limiters[key] = l
	}
	return l
}

// verify checks the credential, the signature, the timestamp and the nonce.
func (s *Server) verify(method string, params map[string]string) *Error {
	if m := params["SignatureMethod"]; m != "" && m != "HMAC-SHA1" {
		return Errorf(http.StatusBadRequest, "InvalidSignatureMethod", "Specified signature method is not supported.")
	}
	if v := params["SignatureVersion"]; v != "" && v != "1.0" {
		return Errorf(http.StatusBadRequest, "InvalidSignatureVersion", "Specified signature version is not supported.")
	}
	s.mu.RLock()
	c, ok := s.creds[params["AccessKeyId"]]
	s.mu.RUnlock()
	if !ok {
		return Errorf(http.StatusNotFound, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
	}
	now := s.cfg.Now()
	sts := StringToSign(method, params)
	want := Sign(sts, c.AccessKeySecret)
	if subtle.ConstantTimeCompare([]byte(want), []byte(params["Signature"])) != 1 {
		return Errorf(http.StatusBadRequest, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation. server string to sign is:%s", sts)
	}
	if c.SecurityToken != "" || params["SecurityToken"] != "" {
		if params["SecurityToken"] == "" {
			return Errorf(http.StatusBadRequest, "MissingSecurityToken", "SecurityToken is mandatory for this action.")
		}
		if subtle.ConstantTimeCompare([]byte(c.SecurityToken), []byte(params["SecurityToken"])) != 1 {
			return Errorf(http.StatusBadRequest, "InvalidSecurityToken.MismatchWithAccessKey", "Specified SecurityToken mismatch with the AccessKey.")
		}
		if !c.Expiration.IsZero() && now.After(c.Expiration) {
			return Errorf(http.StatusBadRequest, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
		}
	}
	ts, err := time.Parse("2006-01-02T15:04:05Z", params["Timestamp"])
	if err != nil {
		return Errorf(http.StatusBadRequest, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
	}
	if d := now.Sub(ts); d > s.cfg.MaxSkew || d < -s.cfg.MaxSkew {
		return Errorf(http.StatusBadRequest, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
	}
	s.nonceMu.Lock()
	defer s.nonceMu.Unlock()
	if now.Sub(s.lastGC) > time.Minute {
		for n, t := range s.nonces {
			if now.Sub(t) > 2*s.cfg.MaxSkew {
				delete(s.nonces, n)
			}
		}
		s.lastGC = now
	}
	key := params["AccessKeyId"] + "/" + params["SignatureNonce"]
	if _, used := s.nonces[key]; used {
		return Errorf(http.StatusBadRequest, "SignatureNonceUsed", "Specified signature nonce was used already.")
	}
	s.nonces[key] = now
	return nil
}

func encodeError(format, requestID, host string, e *Error) ([]byte, string) {
	type errBody struct {
		XMLName   xml.Name `json:"-" xml:"Error"`
		RequestId string   `json:"RequestId" xml:"RequestId"`
		HostId    string   `json:"HostId" xml:"HostId"`
		Code      string   `json:"Code" xml:"Code"`
		Message   string   `json:"Message" xml:"Message"`
		Recommend string   `json:"Recommend" xml:"Recommend"`
	}
	rec := e.Recommend
	if rec == "" {
		rec = "https://api.aliyun.com/troubleshoot?q=" + e.Code + "&product=emulator&requestId=" + requestID
	}
	b := errBody{RequestId: requestID, HostId: host, Code: e.Code, Message: e.Message, Recommend: rec}
	if format == "XML" {
		out, _ := xml.Marshal(b)
		return append([]byte(xml.Header), out...), "text/xml;charset=utf-8"
	}
	out, _ := json.Marshal(b)
	return out, "application/json;charset=utf-8"
}

// encodeResponse writes v with RequestId first, as the real service does.
func encodeResponse(format, action, requestID string, v any) ([]byte, string, error) {
	if format == "XML" {
		var buf bytes.Buffer
		buf.WriteString(xml.Header)
		start := xml.StartElement{Name: xml.Name{Local: action + "Response"}}
		inner := struct {
			RequestId string `xml:"RequestId"`
		}{requestID}
		enc := xml.NewEncoder(&buf)
		if err := enc.EncodeToken(start); err != nil {
			return nil, "", err
		}
		if err := enc.EncodeElement(inner.RequestId, xml.StartElement{Name: xml.Name{Local: "RequestId"}}); err != nil {
			return nil, "", err
		}
		if v != nil {
			if err := encodeXMLFields(enc, v); err != nil {
				return nil, "", err
			}
		}
		if err := enc.EncodeToken(start.End()); err != nil {
			return nil, "", err
		}
		if err := enc.Flush(); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), "text/xml;charset=utf-8", nil
	}
	rid, _ := json.Marshal(requestID)
	out := []byte(`{"RequestId":` + string(rid))
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, "", err
		}
		b = bytes.TrimSpace(b)
		if len(b) < 2 || b[0] != '{' {
			return nil, "", fmt.Errorf("response of %s is not an object", action)
		}
		if inner := bytes.TrimSpace(b[1 : len(b)-1]); len(inner) > 0 {
			out = append(out, ',')
			out = append(out, inner...)
		}
	}
	out = append(out, '}')
	return out, "application/json;charset=utf-8", nil
}

// encodeXMLFields writes v's fields (not v's own element) into the encoder:
// v is marshalled under a throw-away element whose children are copied.
func encodeXMLFields(enc *xml.Encoder, v any) error {
	b, err := xml.Marshal(struct {
		XMLName xml.Name `xml:"x"`
		V       any      `xml:",any"`
	}{V: v})
	if err != nil {
		return err
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	depth := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if depth <= 2 { // <x> and v's own element
				continue
			}
			t.Attr = nil
			tok = t
		case xml.EndElement:
			depth--
			if depth < 2 {
				continue
			}
		}
		if err := enc.EncodeToken(xml.CopyToken(tok)); err != nil {
			return err
		}
	}
}
