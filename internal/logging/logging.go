// Package logging is the one log/slog set-up of dnsaccel's daemons: JSON
// lines when stderr is not a terminal (what a log collector reads), text
// when a person is watching, at a level chosen by --log-level.
package logging

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// Options are the daemons' logging flags.
type Options struct {
	Level  string // debug, info, warn, error
	Format string // auto, json, text
}

// AddFlags registers --log-level and --log-format on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Level, "log-level", "info", "least severe log level written: debug, info, warn, error")
	fs.StringVar(&o.Format, "log-format", "auto", "log line format: json, text, or auto (text on a terminal, JSON otherwise)")
}

// New builds the logger o describes, writing to stderr.
func (o Options) New() (*slog.Logger, error) {
	return o.newTo(os.Stderr, term.IsTerminal(int(os.Stderr.Fd())))
}

func (o Options) newTo(w io.Writer, terminal bool) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cmp.Or(o.Level, "info"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(cmp.Or(o.Format, "auto")) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "auto":
		if terminal {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json, text or auto", o.Format)
}
