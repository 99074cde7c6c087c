// Package plugin holds the plugin set and execution order shared by
// bin/coredns and bin/node-cache: CoreDNS's standard plugins plus this
// project's, ordered by plugin.cfg. Importing it installs the order.
package plugin

import (
	_ "embed"
	"fmt"
	"strings"

	"github.com/coredns/coredns/core/dnsserver"
	// CoreDNS's standard plugin set.
	_ "github.com/coredns/coredns/core/plugin"

	// This project's plugins.
	_ "github.com/dnsaccel/dnsaccel/plugin/k8s_autopath"
	_ "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

//go:embed plugin.cfg
var pluginCfg string

// Directives is the execution order from plugin.cfg.
var Directives = mustParse(pluginCfg)

func init() { dnsserver.Directives = Directives }

// parse reads name:package lines, skipping comments and blank lines.
func parse(cfg string) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	for i, line := range strings.Split(cfg, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pkg, ok := strings.Cut(line, ":")
		if !ok || name == "" || pkg == "" {
			return nil, fmt.Errorf("plugin.cfg line %d: want name:package, got %q", i+1, line)
		}
		if seen[name] {
			return nil, fmt.Errorf("plugin.cfg line %d: %s listed twice", i+1, name)
		}
		seen[name] = true
		names = append(names, name)
	}
	return names, nil
}

func mustParse(cfg string) []string {
	d, err := parse(cfg)
	if err != nil {
		panic(err) // the embedded file is checked by the package's tests
	}
	return d
}
