package manifests

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// exportedMetrics finds the names of the Prometheus metrics the code
// defines, statically: every prometheus.{Counter,Gauge,Histogram,Summary}Opts
// literal (Namespace_Subsystem_Name) and every prometheus.NewDesc, with
// constants resolved across packages, in this module's non-test code and in
// the packages of CoreDNS whose metrics the dashboards use.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/coredns/coredns").Output()
	if err != nil {
		t.Fatalf("locating CoreDNS's module: %v", err)
	}
	coredns := strings.TrimSpace(string(out))
	r := &metricResolver{
		dirs:   map[string]string{"github.com/dnsaccel/dnsaccel": root, "github.com/coredns/coredns": coredns},
		consts: map[string]map[string]string{},
		names:  map[string]bool{},
	}
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if name := d.Name(); name == ".git" || name == "testdata" || name == "bin" {
			return filepath.SkipDir
		}
		r.scan(path)
		return nil
	})
	r.scan(filepath.Join(coredns, "plugin", "metrics", "vars"))
	return r.names
}

type metricResolver struct {
	dirs   map[string]string            // module path -> directory
	consts map[string]map[string]string // directory -> string constants
	names  map[string]bool
}

func (r *metricResolver) dirOf(importPath string) string {
	for mod, dir := range r.dirs {
		if importPath == mod || strings.HasPrefix(importPath, mod+"/") {
			return filepath.Join(dir, strings.TrimPrefix(importPath, mod))
		}
	}
	return ""
}

func (r *metricResolver) parse(dir string) []*ast.File {
	fset := token.NewFileSet()
	pkgs, _ := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	var files []*ast.File
	for _, p := range pkgs {
		for _, f := range p.Files {
			files = append(files, f)
		}
	}
	return files
}

// constsOf are the string constants declared at package level in dir.
func (r *metricResolver) constsOf(dir string) map[string]string {
	if c, ok := r.consts[dir]; ok {
		return c
	}
	c := map[string]string{}
	r.consts[dir] = c
	for _, f := range r.parse(dir) {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							c[n.Name], _ = strconv.Unquote(lit.Value)
						}
					}
				}
			}
		}
	}
	return c
}

// str resolves a string expression: a literal, a constant of the package
// or of an imported package.
func (r *metricResolver) str(e ast.Expr, dir string, imports map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.Ident:
		s, ok := r.constsOf(dir)[e.Name]
		return s, ok
	case *ast.SelectorExpr:
		pkg, ok := e.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		d := r.dirOf(imports[pkg.Name])
		if d == "" {
			return "", false
		}
		s, ok := r.constsOf(d)[e.Sel.Name]
		return s, ok
	}
	return "", false
}

func (r *metricResolver) scan(dir string) {
	for _, f := range r.parse(dir) {
		imports := map[string]string{}
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			name := filepath.Base(p)
			if im.Name != nil {
				name = im.Name.Name
			}
			imports[name] = p
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
					return true
				}
				var parts [3]string
				for _, el := range n.Elts {
					kv, ok := el.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					key, _ := kv.Key.(*ast.Ident)
					v, ok := r.str(kv.Value, dir, imports)
					if key == nil || !ok {
						continue
					}
					switch key.Name {
					case "Namespace":
						parts[0] = v
					case "Subsystem":
						parts[1] = v
					case "Name":
						parts[2] = v
					}
				}
				if parts[2] != "" {
					var nonEmpty []string
					for _, p := range parts {
						if p != "" {
							nonEmpty = append(nonEmpty, p)
						}
					}
					r.names[strings.Join(nonEmpty, "_")] = true
				}
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if ok && sel.Sel.Name == "NewDesc" && len(n.Args) > 0 {
					if v, ok := r.str(n.Args[0], dir, imports); ok {
						r.names[v] = true
					}
				}
			}
			return true
		})
	}
}

var promMetric = regexp.MustCompile(`\b((?:coredns|dnsaccel)_[a-z0-9_]+)`)

// TestDashboardMetrics: every metric a dashboard panel queries is one the
// code exports (histogram series by their base name).
func TestDashboardMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	for _, want := range []string{"coredns_nodecache_requests_total", "coredns_dns_request_duration_seconds", "dnsaccel_nodecache_steering_attached"} {
		if !exported[want] {
			t.Fatalf("the metric scan missed %s (found %d names): the scanner is broken", want, len(exported))
		}
	}
	files, _ := filepath.Glob(filepath.Join("base", "grafana", "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboards")
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			Panels []struct {
				Title   string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal(raw, &dash); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		used := map[string]bool{}
		for _, p := range dash.Panels {
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", file, p.Title)
			}
			for _, tg := range p.Targets {
				for _, m := range promMetric.FindAllString(tg.Expr, -1) {
					base := m
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						if b := strings.TrimSuffix(m, suffix); b != m && exported[b] {
							base = b
						}
					}
					used[base] = true
					if !exported[base] {
						t.Errorf("%s: panel %q queries %s, which no code exports", file, p.Title, m)
					}
				}
			}
		}
		names := make([]string, 0, len(used))
		for n := range used {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("%s: %d metrics, all exported: %v", file, len(names), names)
	}
}
