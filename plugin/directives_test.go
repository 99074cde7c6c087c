package plugin

import (
	"slices"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

func TestEveryDirectiveIsRegistered(t *testing.T) {
	registered := caddy.ListPlugins()["others"]
	for _, name := range Directives {
		if name == "on" { // caddy's event hook, registered outside the dns server type
			continue
		}
		if !slices.Contains(registered, "dns."+name) {
			t.Errorf("plugin.cfg lists %q but no plugin of that name is compiled in (missing import?)", name)
		}
	}
	if !slices.Equal(dnsserver.Directives, Directives) {
		t.Fatal("dnsserver.Directives is not the plugin.cfg order")
	}
}

func TestOrder(t *testing.T) {
	pos := func(n string) int { return slices.Index(Directives, n) }
	for _, c := range []struct{ before, after string }{
		{"cache", "nodecache"}, {"hosts", "nodecache"}, {"nodecache", "forward"}, {"log", "nodecache"},
		{"k8s_autopath", "nodecache"}, {"k8s_autopath", "kubernetes"}, {"k8s_autopath", "cache"}, {"autopath", "k8s_autopath"},
	} {
		if pos(c.before) < 0 || pos(c.after) < 0 || pos(c.before) > pos(c.after) {
			t.Errorf("%s must run before %s", c.before, c.after)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"nocolon", "a:x\na:y", ":pkg"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%q): want error", bad)
		}
	}
}
