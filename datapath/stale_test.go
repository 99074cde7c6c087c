package datapath_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// TestGeneratedUpToDate reruns every `//go:generate go tool bpf2go` line
// under datapath/ into a temporary directory and compares the output with
// the committed *_bpfel/_bpfeb .go and .o files (run from datapath/): edit a C file without
// `make generate` and this fails, naming the files.
func TestGeneratedUpToDate(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		cluster.SkipOrFail(t, "clang is not installed (`apt-get install clang llvm`, or `make deps`): cannot check the generated eBPF files")
	}
	gens, err := findGenerate(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(gens) == 0 {
		t.Fatal("no //go:generate go tool bpf2go line under datapath/")
	}
	for _, g := range gens {
		t.Run(filepath.Base(g.dir)+"/"+g.stem, func(t *testing.T) {
			tmp := t.TempDir()
			args := append([]string{"tool", "bpf2go", "-output-dir", tmp}, g.args...)
			cmd := exec.Command("go", args...)
			cmd.Dir = g.dir
			cmd.Env = append(os.Environ(), "GOPACKAGE="+g.pkg, "GOFILE="+g.file)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go %s (in %s): %v\n%s", strings.Join(args, " "), g.dir, err, out)
			}
			fresh, _ := filepath.Glob(filepath.Join(tmp, "*"))
			if len(fresh) == 0 {
				t.Fatal("bpf2go wrote nothing")
			}
			var stale []string
			for _, f := range fresh {
				committed := filepath.Join(g.dir, filepath.Base(f))
				a, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(committed)
				if err != nil || !bytes.Equal(a, b) {
					stale = append(stale, committed)
				}
			}
			if len(stale) > 0 {
				t.Fatalf("generated eBPF files are stale (their C changed, or another clang built them): %s\nrun `make generate` and commit the result", strings.Join(stale, ", "))
			}
		})
	}
}

type generate struct {
	dir, file, pkg, stem string
	args                 []string // after "go tool bpf2go"
}

// findGenerate returns the bpf2go go:generate lines of the Go files under root.
func findGenerate(root string) ([]generate, error) {
	var out []generate
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		pkg := ""
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if p, ok := strings.CutPrefix(line, "package "); ok && pkg == "" {
				pkg = strings.TrimSpace(p)
			}
			rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go ")
			if !ok {
				continue
			}
			args, err := splitArgs(rest)
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			stem := ""
			for i, a := range args {
				// The ident is the first argument after the flags that
				// take a value ... good enough: the first that is neither
				// a flag nor a flag's value.
				if !strings.HasPrefix(a, "-") && (i == 0 || !strings.HasPrefix(args[i-1], "-") || isBoolFlag(args[i-1])) {
					stem = a
					break
				}
			}
			out = append(out, generate{dir: filepath.Dir(path), file: filepath.Base(path), pkg: pkg, stem: stem, args: args})
		}
		return sc.Err()
	})
	return out, err
}

func isBoolFlag(f string) bool {
	switch strings.TrimLeft(f, "-") {
	case "no-strip", "no-global-types":
		return true
	}
	return false
}

// splitArgs splits like a shell, with double quotes only (go generate's
// own rule).
func splitArgs(s string) ([]string, error) {
	var (
		out   []string
		cur   strings.Builder
		in    bool
		begun bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			in, begun = !in, true
		case (r == ' ' || r == '\t') && !in:
			if begun {
				out = append(out, cur.String())
				cur.Reset()
				begun = false
			}
		default:
			cur.WriteRune(r)
			begun = true
		}
	}
	if in {
		return nil, errors.New("unterminated quote in //go:generate")
	}
	if begun {
		out = append(out, cur.String())
	}
	return out, nil
}
