package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestOptions(t *testing.T) {
	tests := []struct {
		name     string
		opts     Options
		terminal bool
		wantJSON bool
		wantErr  string
		debugOut bool
	}{
		{name: "defaults, not a terminal", wantJSON: true},
		{name: "defaults, terminal", terminal: true},
		{name: "json forced on a terminal", opts: Options{Format: "json"}, terminal: true, wantJSON: true},
		{name: "text forced", opts: Options{Format: "text"}},
		{name: "debug level", opts: Options{Level: "debug", Format: "json"}, wantJSON: true, debugOut: true},
		{name: "bad level", opts: Options{Level: "loud"}, wantErr: "--log-level"},
		{name: "bad format", opts: Options{Format: "xml"}, wantErr: "--log-format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := tt.opts.newTo(&buf, tt.terminal)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l.Debug("dbg")
			l.Info("hello", "k", "v")
			out := buf.String()
			if got := strings.Contains(out, "dbg"); got != tt.debugOut {
				t.Errorf("debug line written = %v, want %v:\n%s", got, tt.debugOut, out)
			}
			last := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
			var m map[string]any
			isJSON := json.Unmarshal([]byte(last), &m) == nil
			if isJSON != tt.wantJSON {
				t.Errorf("JSON = %v, want %v: %q", isJSON, tt.wantJSON, last)
			}
			if !strings.Contains(last, "hello") {
				t.Errorf("line lacks the message: %q", last)
			}
		})
	}
}
