package nodecache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coredns/caddy/caddyfile"
)

// cacheOpts is the nodecache option block every generated block carries.
const cacheOpts = `        success 9984
        denial 9984 30
        prefetch 10 1m 10%
        serve_stale 1h
        max_bytes 64M
    }
}
`

func TestKubernetesCorefile(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kube config") // a space: must be quoted
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"node and kubeconfig", Config{
			Listen: []string{"169.254.20.10:53"}, Upstreams: []string{"192.0.2.53:53"}, Metrics: ":9253",
			Kube: Kube{Kubeconfig: "/etc/kubernetes/node-cache.conf"}, NodeName: "node-a",
			ClusterDomain: "cluster.local", ClusterUpstreams: []string{"10.96.0.10:53"},
		}, `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind 169.254.20.10
    errors
    prometheus :9253
    k8s_autopath cluster.local {
        kubeconfig /etc/kubernetes/node-cache.conf
        node node-a
    }
    nodecache 10.96.0.10:53 {
` + cacheOpts + `.:53 {
    bind 169.254.20.10
    errors
    prometheus :9253
    nodecache 192.0.2.53:53 {
` + cacheOpts},
		{"in-cluster, every pod, no metrics", Config{
			Listen: []string{"169.254.20.10:53"}, Upstreams: []string{"192.0.2.53:53"},
			Kube: Kube{InCluster: true}, ClusterDomain: "Cluster.Local.",
			ClusterUpstreams: []string{"10.96.0.10:53", "10.96.0.11:53"},
		}, `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind 169.254.20.10
    errors
    k8s_autopath cluster.local
    nodecache 10.96.0.10:53 10.96.0.11:53 {
` + cacheOpts + `.:53 {
    bind 169.254.20.10
    errors
    nodecache 192.0.2.53:53 {
` + cacheOpts},
		{"two ports, IPv6, search, quoted kubeconfig", Config{
			Listen:    []string{"[fd00::10]:53", "169.254.20.10:53", "127.0.0.1:5301"},
			Upstreams: []string{"[2001:db8::53]:53"}, Kube: Kube{Kubeconfig: kc}, NodeName: "node-a",
			ClusterDomain: "k8s.example", ClusterUpstreams: []string{"[fd00:96::a]:53"}, Search: []string{"corp.example"},
		}, `k8s.example:53 in-addr.arpa:53 ip6.arpa:53 {
    bind fd00::10 169.254.20.10
    errors
    k8s_autopath k8s.example {
        kubeconfig "` + kc + `"
        node node-a
        search corp.example
    }
    nodecache [fd00:96::a]:53 {
` + cacheOpts + `.:53 {
    bind fd00::10 169.254.20.10
    errors
    nodecache [2001:db8::53]:53 {
` + cacheOpts + `k8s.example:5301 in-addr.arpa:5301 ip6.arpa:5301 {
    bind 127.0.0.1
    errors
    k8s_autopath k8s.example {
        kubeconfig "` + kc + `"
        node node-a
        search corp.example
    }
    nodecache [fd00:96::a]:53 {
` + cacheOpts + `.:5301 {
    bind 127.0.0.1
    errors
    nodecache [2001:db8::53]:53 {
` + cacheOpts},
		{"no search domains at all", Config{
			Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"192.0.2.53:53"},
			Kube: Kube{InCluster: true}, ClusterDomain: "cluster.local", ClusterUpstreams: []string{"10.96.0.10:53"}, Search: []string{},
		}, `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind 127.0.0.1
    errors
    k8s_autopath cluster.local {
        search
    }
    nodecache 10.96.0.10:53 {
` + cacheOpts + `.:53 {
    bind 127.0.0.1
    errors
    nodecache 192.0.2.53:53 {
` + cacheOpts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.cfg.Corefile()
			if got != tc.want {
				t.Fatalf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			// What CoreDNS's parser makes of it: the server block keys, and
			// the kubeconfig path as one token.
			blocks, err := caddyfile.Parse("Corefile", strings.NewReader(got), []string{"bind", "errors", "prometheus", "k8s_autopath", "nodecache"})
			if err != nil {
				t.Fatal(err)
			}
			if len(blocks) != 2*len(tc.cfg.ports()) {
				t.Fatalf("%d server blocks, want 2 per port", len(blocks))
			}
			if k := tc.cfg.Kube.Kubeconfig; k != "" {
				toks := blocks[0].Tokens["k8s_autopath"]
				if !containsToken(toks, k) {
					t.Errorf("kubeconfig %q is not one token in %v", k, toks)
				}
			}
		})
	}
}

func containsToken(toks []caddyfile.Token, s string) bool {
	for _, tok := range toks {
		if tok.Text == s {
			return true
		}
	}
	return false
}

// TestValidate: standalone configurations, then Kubernetes mode's.
func TestValidate(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\n"), 0o600)
	ok := func(mut func(*Config)) Config {
		c := Config{Listen: []string{"169.254.20.10:53"}, Upstreams: []string{"192.0.2.53:53"},
			Kube: Kube{Kubeconfig: kc}, NodeName: "node-a", ClusterDomain: "cluster.local",
			ClusterUpstreams: []string{"10.96.0.10:53"}, ClusterUpstreamsFrom: "Service kube-system/kube-dns"}
		if mut != nil {
			mut(&c)
		}
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" = valid
	}{
		{"ok", Config{Listen: []string{"127.0.0.1:5301"}, Upstreams: []string{"127.0.0.1:5300"}}, ""},
		{"no listen", Config{Upstreams: []string{"127.0.0.1:5300"}}, "--listen"},
		{"bad listen", Config{Listen: []string{"localhost:53"}, Upstreams: []string{"127.0.0.1:5300"}}, "--listen"},
		{"wildcard", Config{Listen: []string{"0.0.0.0:53"}, Upstreams: []string{"127.0.0.1:5300"}}, "wildcard"},
		{"no upstream", Config{Listen: []string{"127.0.0.1:53"}}, "--upstream"},
		{"bad upstream", Config{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"10.0.0.1"}}, "--upstream"},
		{"loop", Config{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"127.0.0.1:53"}}, "itself"},
		{"missing conf", Config{Conf: "/nonexistent/Corefile"}, "--conf"},
		{"ok kubernetes", ok(nil), ""},
		{"in-cluster, no node", ok(func(c *Config) { c.Kube, c.NodeName = Kube{InCluster: true}, "" }), ""},
		{"no cluster upstream", ok(func(c *Config) { c.ClusterUpstreams = nil }), "--cluster-upstream"},
		{"cluster upstream without port", ok(func(c *Config) { c.ClusterUpstreams = []string{"10.96.0.10"} }), "--cluster-upstream"},
		{"cluster upstream is a name", ok(func(c *Config) { c.ClusterUpstreams = []string{"kube-dns:53"} }), "--cluster-upstream"},
		{"cluster upstream loops", ok(func(c *Config) { c.Listen = append(c.Listen, "10.96.0.10:53") }),
			"--cluster-upstream 10.96.0.10:53 (from Service kube-system/kube-dns) is also a --listen address"},
		{"no upstream", ok(func(c *Config) { c.Upstreams = nil }), "--upstream"},
		{"bad cluster domain", ok(func(c *Config) { c.ClusterDomain = "cluster local" }), "--cluster-domain"},
		{"root cluster domain", ok(func(c *Config) { c.ClusterDomain = "." }), "--cluster-domain"},
		{"reverse zone as cluster domain", ok(func(c *Config) { c.ClusterDomain = "in-addr.arpa" }), "--cluster-domain"},
		{"missing kubeconfig", ok(func(c *Config) { c.Kube.Kubeconfig = "/nonexistent/kubeconfig" }), "--kubeconfig"},
		{"kubeconfig with a quote", ok(func(c *Config) { c.Kube.Kubeconfig = `/tmp/a"b` }), "--kubeconfig"},
		{"bad node name", ok(func(c *Config) { c.NodeName = "Node A" }), "--node-name"},
		{"bad search domain", ok(func(c *Config) { c.Search = []string{"corp{x}"} }), "--resolv-conf"},
		{"cluster upstream outside Kubernetes mode", ok(func(c *Config) { c.Kube = Kube{} }), "only used in Kubernetes mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestResolvConfSearch(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("domain old.example\nnameserver 192.0.2.1\nsearch corp.example lan\n"), 0o644)
	got, err := ResolvConfSearch(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "corp.example,lan" {
		t.Fatalf("got %v, want the last search line", got)
	}
}

// TestUpstreamMarkInConf: with steering, every nodecache directive of a
// --conf Corefile carries --upstream-mark, unless it sets its own; the
// generated Corefile writes it too, and neither without steering.
func TestUpstreamMarkInConf(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"no options", "a:53 {\n    nodecache 10.0.0.1:53 # the VIP\n}\n",
			"a:53 {\n    nodecache 10.0.0.1:53 {\n        upstream_mark 0xd530000\n    }\n}\n"},
		{"options", "a:53 {\n  nodecache 10.0.0.1:53 {\n    prefer_udp\n  }\n}",
			"a:53 {\n  nodecache 10.0.0.1:53 {\n      upstream_mark 0xd530000\n    prefer_udp\n  }\n}"},
		{"its own mark", "a:53 {\n  nodecache 10.0.0.1:53 {\n    upstream_mark 7 # ours\n  }\n}",
			"a:53 {\n  nodecache 10.0.0.1:53 {\n    upstream_mark 7 # ours\n  }\n}"},
		{"a mark in another block", "a:53 {\n  nodecache 10.0.0.1:53 {\n  }\n  x {\n    upstream_mark 7\n  }\n}\nb:53 {\n  nodecache 10.0.0.2:53 {\n    upstream_mark 8\n  }\n}",
			"a:53 {\n  nodecache 10.0.0.1:53 {\n      upstream_mark 0xd530000\n  }\n  x {\n    upstream_mark 7\n  }\n}\nb:53 {\n  nodecache 10.0.0.2:53 {\n    upstream_mark 8\n  }\n}"},
		{"no nodecache", "nodecache.test:53 {\n    whoami # nodecache\n}\n", "nodecache.test:53 {\n    whoami # nodecache\n}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := withUpstreamMark(tc.in, 0xd530000)
			if got != tc.want {
				t.Fatalf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			if _, err := caddyfile.Parse("Corefile", strings.NewReader(got), nil); err != nil {
				t.Fatalf("not a Corefile: %v\n%s", err, got)
			}
		})
	}

	conf := filepath.Join(t.TempDir(), "Corefile")
	os.WriteFile(conf, []byte(".:53 {\n    nodecache 10.96.0.10:53\n}\n"), 0o644)
	steer := Steer{Mode: "auto", ClusterDNS: []string{"10.96.0.10"}, UpstreamMark: 0xd530000}
	for _, c := range []Config{
		{Conf: conf, Steer: steer},
		{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"192.0.2.53:53"}, Steer: steer},
	} {
		src, _, err := c.Source()
		if err != nil || strings.Count(src, "upstream_mark 0xd530000") != 1 {
			t.Errorf("%s Corefile with steering: err %v\n%s", c.Mode(), err, src)
		}
		c.Steer.Mode = "false"
		if src, _, err := c.Source(); err != nil || strings.Contains(src, "upstream_mark") {
			t.Errorf("%s Corefile without steering: err %v\n%s", c.Mode(), err, src)
		}
	}
}
