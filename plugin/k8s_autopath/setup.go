package k8sautopath

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/go-logr/logr/funcr"
	"github.com/miekg/dns"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func init() { plugin.Register(pluginName, setup) }

// Config is the parsed k8s_autopath directive.
type Config struct {
	Zone       string   // fully qualified, lower case; default cluster.local.
	Kubeconfig string   // "" means in-cluster
	Node       string   // "" means every pod in the cluster
	Search     []string // fully qualified; nil means from ResolvConf
	ResolvConf string   // where the default search line comes from
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	a := &Autopath{zone: cfg.Zone, svc: "svc." + cfg.Zone, search: cfg.Search}
	var shared *sharedIndex
	c.OnStartup(func() error {
		s, err := acquireIndex(cfg)
		if err != nil {
			return plugin.Error(pluginName, err)
		}
		shared, a.pods = s, s.index
		return nil
	})
	c.OnShutdown(func() error {
		if shared != nil {
			releaseIndex(shared)
		}
		return nil
	})
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		a.Next = next
		return a
	})
	return nil
}

// parse reads:
//
//	k8s_autopath [ZONE] {
//	    kubeconfig FILE
//	    node NAME
//	    search DOMAIN...
//	}
func parse(c *caddy.Controller) (Config, error) { return parseWith(c, "/etc/resolv.conf") }

// parseWith is parse with the resolv.conf that supplies the default search.
func parseWith(c *caddy.Controller, resolvConf string) (Config, error) {
	cfg := Config{Zone: "cluster.local.", ResolvConf: resolvConf}
	seen := false
	for c.Next() {
		if seen {
			return cfg, c.Err("k8s_autopath may appear once per server block")
		}
		seen = true
		args := c.RemainingArgs()
		switch len(args) {
		case 0:
		case 1:
			z, err := fqdn(args[0])
			if err != nil {
				return cfg, c.Errf("zone: %v", err)
			}
			cfg.Zone = z
		default:
			return cfg, c.ArgErr()
		}
		explicitSearch := false
		for c.NextBlock() {
			opt := c.Val()
			args := c.RemainingArgs()
			switch opt {
			case "kubeconfig":
				if len(args) != 1 {
					return cfg, c.Errf("kubeconfig needs one FILE")
				}
				cfg.Kubeconfig = args[0]
			case "node":
				if len(args) != 1 || args[0] == "" {
					return cfg, c.Errf("node needs one NAME")
				}
				cfg.Node = args[0]
			case "search":
				explicitSearch = true
				cfg.Search = []string{}
				for _, d := range args {
					f, err := fqdn(d)
					if err != nil {
						return cfg, c.Errf("search: %v", err)
					}
					cfg.Search = append(cfg.Search, f)
				}
			default:
				return cfg, c.Errf("unknown option %q", opt)
			}
		}
		if !explicitSearch {
			s, err := searchFromResolvConf(cfg.ResolvConf)
			if err != nil {
				log.Warningf("no extra search domains: %v", err)
			}
			cfg.Search = s
		}
	}
	return cfg, nil
}

// fqdn validates a domain name and returns it lower-cased and fully qualified.
func fqdn(s string) (string, error) {
	s = strings.ToLower(dns.Fqdn(s))
	if s == "." {
		return "", fmt.Errorf("%q: the root is not a search domain", s)
	}
	if _, ok := dns.IsDomainName(s); !ok {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	return s, nil
}

// searchFromResolvConf returns the search line of a resolv.conf: on a node
// it is what the kubelet appends to every ClusterFirst pod's search path.
func searchFromResolvConf(path string) ([]string, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	rc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	for _, d := range rc.Search {
		if f, err := fqdn(d); err == nil {
			out = append(out, f)
		}
	}
	return out, nil
}

// One index per (kubeconfig, node) in the process: several blocks or a
// reload share it, and a reload keeps a synced index.
type sharedIndex struct {
	key    string
	index  *Index
	refs   int
	cancel context.CancelFunc
}

var (
	indexMu sync.Mutex
	indexes = map[string]*sharedIndex{}
)

func acquireIndex(cfg Config) (*sharedIndex, error) {
	key := cfg.Kubeconfig + "\x00" + cfg.Node
	indexMu.Lock()
	defer indexMu.Unlock()
	if s, ok := indexes[key]; ok {
		s.refs++
		return s, nil
	}
	client, err := newClient(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	label := cfg.Node
	if label == "" {
		label = "*"
	}
	idx := NewIndex()
	idx.onChange = func(n int) { indexPods.WithLabelValues(label).Set(float64(n)) }
	// client-go logs through the logger in ctx: give it one of ours, so
	// that it never reads klog's global logger, which CoreDNS's kubernetes
	// plugin replaces during every (re)load while this index runs on.
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), funcr.New(func(prefix, args string) {
		log.Infof("client-go: %s %s", prefix, args)
	}, funcr.Options{})))
	s := &sharedIndex{key: key, index: idx, refs: 1, cancel: cancel}
	indexes[key] = s
	indexSynced.WithLabelValues(label).Set(0)
	go func() {
		idx.Run(ctx, client, cfg.Node)
	}()
	go func() {
		// Report the first sync, once.
		if idx.WaitSynced(ctx) {
			indexSynced.WithLabelValues(label).Set(1)
			log.Infof("pod index synced: %d pods (node %q)", idx.Len(), cfg.Node)
		}
	}()
	return s, nil
}

func releaseIndex(s *sharedIndex) {
	indexMu.Lock()
	defer indexMu.Unlock()
	s.refs--
	if s.refs == 0 {
		s.cancel()
		delete(indexes, s.key)
	}
}

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			err = fmt.Errorf("no kubeconfig given and not in a cluster: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "coredns/" + pluginName
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return kubernetes.NewForConfig(rc)
}
