// Command coredns is CoreDNS with its standard plugins and dnsaccel's
// (nodecache, k8s_autopath), in the order of plugin/plugin.cfg.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/coremain"

	_ "github.com/dnsaccel/dnsaccel/plugin"
)

func main() {
	// -plugins lists plugins with their server type (dns.nodecache), as
	// CoreDNS did before 1.11 and as tooling that checks a custom build for
	// a plugin expects; recent CoreDNS drops the prefix.
	for _, a := range os.Args[1:] {
		if a == "-plugins" || a == "--plugins" {
			fmt.Println(strings.Join(caddy.ListPlugins()["others"], "\n"))
			return
		}
	}
	coremain.Run()
}
