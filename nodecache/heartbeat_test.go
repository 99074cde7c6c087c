package nodecache

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// wedge makes p's serving path (part: chain, fastpath, all) block forever
// through the hidden --debug-wedge hook; the process lives on.
func (p *nodeCacheProc) wedge(t *testing.T, part string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Post(fmt.Sprintf("http://%s/debug/wedge?part=%s", p.health, part), "", nil)
	if err != nil {
		t.Fatalf("%s: wedge %s: %v", p.name, part, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: wedge %s: HTTP %d", p.name, part, resp.StatusCode)
	}
}

func (p *nodeCacheProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return p.cmd.Process.Signal(syscall.Signal(0)) == nil
	}
}

// TestSteerHeartbeatFollowsServing: the heartbeat proves that node-cache
// serves, not that its process lives. Its serving path is wedged while the
// process runs on (the hidden --debug-wedge hook): first the chain (the
// nodecache plugin's ServeDNS blocks; fast-path hits would still be
// answered), then, in a new node-cache, the UDP fast path's threads (the
// chain still works, TCP too). Each time, pods' queries reach the cluster
// DNS directly within --heartbeat-timeout + 1 s, as after a kill -9, and
// /ready goes 503 while /health (the process) stays 200. Before, the
// self-probe answers the pod's query for the probe name, over UDP and TCP.
func TestSteerHeartbeatFollowsServing(t *testing.T) {
	s := newSteerSetup(t)
	const timeout = time.Second
	listen := freeAddr(t)
	for _, part := range []string{"chain", "fastpath"} {
		nc := startNodeCache(t, "node-cache wedge "+part, append(s.steerArgs(timeout), "--listen", listen,
			"--upstream", s.VIP.String()+":53", "--metrics", "", "--debug-wedge")...)
		steertest.WaitFor(t, "steering through node-cache", 5*time.Second, func() bool {
			saw, err := s.whoSaw(t, time.Second)
			return err == nil && saw == s.DNS.HostIP
		})
		for _, tcp := range []bool{false, true} {
			if r, err := s.probeFromPod(tcp); err != nil || !isProbeAnswer(r) {
				t.Errorf("the probe name from the pod (tcp=%v): %v %v", tcp, err, r)
			}
		}

		nc.wedge(t, part)
		wedged := time.Now()
		var fellBack, unready time.Duration
		steertest.WaitFor(t, "pod queries answered by the cluster DNS with node-cache's "+part+" wedged", 10*time.Second, func() bool {
			saw, err := s.whoSaw(t, 200*time.Millisecond)
			if err == nil && saw == s.Pod.IP {
				fellBack = time.Since(wedged)
				return true
			}
			return false
		})
		steertest.WaitFor(t, "/ready failing with the "+part+" wedged", 10*time.Second, func() bool {
			if httpGet(nc.health, "/ready") == http.StatusServiceUnavailable {
				unready = time.Since(wedged)
				return true
			}
			return false
		})
		t.Logf("%s wedged: pods fell back to the cluster DNS after %s, /ready failed after %s (heartbeat timeout %s)",
			part, fellBack.Round(time.Millisecond), unready.Round(time.Millisecond), timeout)
		if fellBack > timeout+time.Second {
			t.Errorf("%s wedged: fallback took %s, want <= heartbeat timeout %s + 1s", part, fellBack, timeout)
		}
		if unready > timeout+time.Second {
			t.Errorf("%s wedged: /ready failed only after %s, want <= heartbeat timeout %s + 1s", part, unready, timeout)
		}
		if !nc.running() || httpGet(nc.health, "/health") != http.StatusOK {
			t.Errorf("%s wedged: the process should live on with /health 200 (running %v)", part, nc.running())
		}
		if !strings.Contains(nc.logs.String(), "serving probe failed") {
			t.Errorf("%s wedged: no log line for the failed probes:\n%s", part, nc.logs.String())
		}
		// Steering stays off while it is wedged.
		if saw, err := s.whoSaw(t, time.Second); err != nil || saw != s.Pod.IP {
			t.Errorf("%s wedged, later: the cluster DNS saw %v (err %v), want the pod's %s", part, saw, err, s.Pod.IP)
		}
		// A wedged process cannot drain; the DaemonSet would kill it.
		nc.cmd.Process.Signal(syscall.SIGKILL)
		<-nc.done
	}
}

// probeFromPod asks the VIP for the probe name from the pod.
func (s *steerSetup) probeFromPod(tcp bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(nodecacheplugin.ProbeName, dns.TypeTXT)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	if tcp {
		c.Net = "tcp"
	}
	var r *dns.Msg
	err := s.Pod.Do(func() error {
		var err error
		r, _, err = c.Exchange(m, netip.AddrPortFrom(s.VIP, 53).String())
		return err
	})
	return r, err
}

// TestHeartbeatReadinessWithoutSteering: without steering, /ready follows
// the serving probes of the --listen addresses: a wedged chain makes it
// fail within the heartbeat timeout + 1 s, the process living on.
func TestHeartbeatReadinessWithoutSteering(t *testing.T) {
	up := startUpstream(t)
	nc := startNodeCache(t, "node-cache --steer=false", "--steer=false", "--listen", freeAddr(t), "--upstream", up,
		"--metrics", "", "--heartbeat-timeout", "1s", "--debug-wedge")
	if !strings.Contains(nc.logs.String(), "serving probes answered") {
		t.Errorf("no log line for the first answered probes:\n%s", nc.logs.String())
	}
	nc.wedge(t, "chain")
	wedged := time.Now()
	steertest.WaitFor(t, "/ready failing with the chain wedged", 10*time.Second, func() bool {
		return httpGet(nc.health, "/ready") == http.StatusServiceUnavailable
	})
	if d := time.Since(wedged); d > 2*time.Second {
		t.Errorf("/ready failed only after %s, want <= 2s", d)
	}
	if code := httpGet(nc.health, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d with /ready failing, want 503", code)
	}
	if !nc.running() || httpGet(nc.health, "/health") != http.StatusOK {
		t.Errorf("the process should live on with /health 200")
	}
}

func TestProbeTargets(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want []string
	}{
		{Config{Listen: []string{"127.0.0.1:5301", "127.0.0.2:0"}}, []string{"127.0.0.1:5301"}},
		{Config{Listen: []string{"127.0.0.1:5301"}, Conf: "/Corefile"}, nil},
		{Config{Listen: []string{"127.0.0.1:5301"}, Steer: Steer{Mode: "auto", LocalIPs: []string{"169.254.20.10", "fd00::53"},
			ClusterDNS: []string{"10.96.0.10"}}}, []string{"169.254.20.10:53", "[fd00::53]:53"}},
		{Config{Listen: []string{"127.0.0.1:5301"}, Conf: "/Corefile", Steer: Steer{Mode: "true", LocalIPs: []string{"169.254.20.10"},
			ClusterDNS: []string{"10.96.0.10"}}}, []string{"169.254.20.10:53"}},
	} {
		var got []string
		for _, ap := range tc.cfg.probeTargets() {
			got = append(got, ap.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%+v: probe targets %v, want %v", tc.cfg, got, tc.want)
		}
	}
}
