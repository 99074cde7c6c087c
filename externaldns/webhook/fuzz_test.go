package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"testing"
)

// POST /records bodies: decoding never panics; what decodes re-encodes
// and decodes to the same changes; every error is a bad request.
func FuzzDecodeChanges(f *testing.F) {
	f.Add([]byte(`{"create":[{"dnsName":"a.wh.internal","targets":["10.0.0.1"],"recordType":"A","recordTTL":60,"labels":{"owner":"x"},"providerSpecific":[{"name":"webhook/pvtz-status","value":"ENABLE"}]}]}`))
	f.Add([]byte(`{"updateOld":[{"dnsName":"a","recordType":"A"}],"updateNew":[{"dnsName":"a","recordType":"A","targets":[]}],"delete":[null]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"create":[{"dnsName":"","recordType":"A"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChanges(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error is not a bad request: %v", err)
			}
			return
		}
		enc, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := DecodeChanges(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-decode: %v (%s)", err, enc)
		}
		if !reflect.DeepEqual(norm(c), norm(c2)) {
			t.Fatalf("round trip differs:\n%#v\n%#v", c, c2)
		}
	})
}

// norm maps empty slices and maps to nil (JSON's omitempty does).
func norm(c *Changes) *Changes {
	out := &Changes{}
	for i, l := range [][]*Endpoint{c.Create, c.UpdateOld, c.UpdateNew, c.Delete} {
		var n []*Endpoint
		for _, e := range l {
			x := *e
			if len(x.Targets) == 0 {
				x.Targets = nil
			}
			if len(x.Labels) == 0 {
				x.Labels = nil
			}
			if len(x.ProviderSpecific) == 0 {
				x.ProviderSpecific = nil
			}
			n = append(n, &x)
		}
		*[]*[]*Endpoint{&out.Create, &out.UpdateOld, &out.UpdateNew, &out.Delete}[i] = n
	}
	return out
}

// POST /adjustendpoints: never panics, and canonical is a fixed point
// (adjusting an adjusted list changes nothing), which is what keeps
// ExternalDNS from planning the same update every cycle.
func FuzzAdjustEndpoints(f *testing.F) {
	f.Add([]byte(`[{"dnsName":"Web.WH.internal.","targets":["10.0.0.2","10.0.0.1"],"recordType":"A","recordTTL":1}]`))
	f.Add([]byte(`[{"dnsName":"m.wh.internal","targets":["10 mail.example.com."],"recordType":"MX"},{"dnsName":"t","targets":["\"quoted\""],"recordType":"TXT"}]`))
	f.Add([]byte(`[{"dnsName":"s.wh.internal","targets":["0 50 80 x.wh.internal."],"recordType":"SRV","providerSpecific":[{"name":"webhook/pvtz-remark","value":"ed;o=a;r=svc/a/b"}]}]`))
	f.Add([]byte(`[{"dnsName":"v6","targets":["::ffff:10.0.0.1","2001:DB8::1"],"recordType":"AAAA","setIdentifier":"x"}]`))
	s := &Server{cfg: Config{Remark: "external-dns", TTL: 60}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, b []byte) {
		eps, err := DecodeEndpoints(bytes.NewReader(b))
		if err != nil {
			return
		}
		once := s.AdjustEndpoints(eps)
		enc, _ := json.Marshal(once)
		back, err := DecodeEndpoints(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("adjusted endpoints do not decode: %v\n%s", err, enc)
		}
		twice := s.AdjustEndpoints(back)
		enc2, _ := json.Marshal(twice)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("not a fixed point:\n%s\n%s", enc, enc2)
		}
	})
}
