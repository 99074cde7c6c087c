package manifests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/ecs/ecstest"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

// The least-privilege check: the base's RBAC is applied to an API server
// that writes an audit log, each component runs as its ServiceAccount doing
// its job, and the log must show every request allowed and every rule of
// the component's roles used. A missing rule shows as a 403, an unneeded one
// as a grant nobody used.

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
`

// request is one audited API request.
type request struct {
	User     string
	Verb     string
	Group    string
	Resource string
	Name     string
	Code     int
}

func (r request) String() string {
	return fmt.Sprintf("%s %s/%s %q -> %d", r.Verb, r.Group, r.Resource, r.Name, r.Code)
}

func readAudit(t *testing.T, path string) []request {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			User      struct{ Username string }
			Verb      string
			ObjectRef *struct {
				Resource, Subresource, APIGroup, Name string
			}
			ResponseStatus *struct{ Code int }
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.ObjectRef == nil || ev.ResponseStatus == nil {
			continue
		}
		res := ev.ObjectRef.Resource
		if ev.ObjectRef.Subresource != "" { // as RBAC names it: nodes/status
			res += "/" + ev.ObjectRef.Subresource
		}
		out = append(out, request{ev.User.Username, ev.Verb, ev.ObjectRef.APIGroup, res, ev.ObjectRef.Name, ev.ResponseStatus.Code})
	}
	return out
}

// saKubeconfig writes a kubeconfig authenticating as the ServiceAccount.
func saKubeconfig(t *testing.T, c *cluster.Cluster, sa string) string {
	t.Helper()
	ctx := context.Background()
	exp := int64(3600)
	tok, err := c.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", sa, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.RestConfig.CAData}
	cfg.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: sa, Namespace: "kube-system"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// grants lists what the component's roles allow: "verb group/resource"
// (with "/name" when the rule names resources).
func grants(t *testing.T, c *cluster.Cluster, sa string) []string {
	t.Helper()
	ctx := context.Background()
	var rules []rbacv1.PolicyRule
	crbs, err := c.Client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bound := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == "kube-system" {
				return true
			}
		}
		return false
	}
	for _, b := range crbs.Items {
		if bound(b.Subjects) && strings.HasPrefix(b.RoleRef.Name, "dnsaccel:") {
			r, err := c.Client.RbacV1().ClusterRoles().Get(ctx, b.RoleRef.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rules = append(rules, r.Rules...)
		}
	}
	rbs, err := c.Client.RbacV1().RoleBindings("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rbs.Items {
		if bound(b.Subjects) && b.RoleRef.Kind == "Role" {
			r, err := c.Client.RbacV1().Roles("kube-system").Get(ctx, b.RoleRef.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rules = append(rules, r.Rules...)
		}
	}
	var out []string
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if len(r.ResourceNames) == 0 {
						out = append(out, fmt.Sprintf("%s %s/%s", v, g, res))
					}
					for _, n := range r.ResourceNames {
						out = append(out, fmt.Sprintf("%s %s/%s/%s", v, g, res, n))
					}
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// covers reports whether grant g was exercised by one of reqs.
func covers(g string, reqs []request) bool {
	for _, r := range reqs {
		base := fmt.Sprintf("%s %s/%s", r.Verb, r.Group, r.Resource)
		if g == base || g == base+"/"+r.Name {
			return true
		}
	}
	return false
}

func freePort(t *testing.T) string {
	t.Helper()
	addr, err := dnstest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// runUntil runs a command until ready() holds (then stops it) or it exits.
func runUntil(t *testing.T, what string, cmd *exec.Cmd, ready func() bool) {
	t.Helper()
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !ready() {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("%s exited: %v\n%s", what, err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready in 60s\n%s", what, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func httpBody(addr, path string) string {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func httpOK(addr, path string) bool {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + path)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestRBACLeastPrivilege runs node-cache, central CoreDNS, pvtz-sync and
// eni-agent as their ServiceAccounts against the base's RBAC and checks the
// audit log.
func TestRBACLeastPrivilege(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server and builds the binaries")
	}
	dir := t.TempDir()
	policy := filepath.Join(dir, "audit-policy.yaml")
	auditLog := filepath.Join(dir, "audit.log")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.WithAPIServerArgs("--audit-policy-file="+policy, "--audit-log-path="+auditLog))
	if err != nil {
		cluster.SkipOrFail(t, "API server with an audit log: %v", err)
	}
	defer c.Stop()
	if out, err := kubectl(t, c, "apply", "-k", "base"); err != nil {
		t.Fatalf("kubectl apply -k base: %v\n%s", err, out)
	}
	upstream := dnstest.NewZone(t)
	emu := pvtztest.Start(t, openapi.Config{})
	if _, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	components := []struct {
		sa  string
		run func(t *testing.T, kubeconfig string)
		// onFailure are grants only a failure exercises (the test does
		// not stage one): checked for 403s, not for use.
		onFailure []string
	}{
		{"node-cache", func(t *testing.T, kubeconfig string) {
			bin := steertest.Binary(t, "node-cache")
			// The Service lookups (kube-dns-upstream, kube-dns) ...
			out, err := exec.Command(bin, "--kubeconfig", kubeconfig, "--node-name", "node-1", "--print-config",
				"--upstream", upstream.Addr, "--listen", freePort(t)).CombinedOutput()
			if err != nil {
				t.Fatalf("node-cache --print-config: %v\n%s", err, out)
			}
			// ... and k8s_autopath's pod index, serving.
			metrics := freePort(t)
			runUntil(t, "node-cache", exec.Command(bin, "--kubeconfig", kubeconfig, "--node-name", "node-1",
				"--cluster-upstream", upstream.Addr, "--upstream", upstream.Addr, "--listen", freePort(t),
				"--steer=false", "--health", freePort(t), "--metrics", metrics), func() bool {
				return strings.Contains(httpBody(metrics, "/metrics"), `coredns_k8s_autopath_index_synced{node="node-1"} 1`)
			})
		}, nil},
		{"coredns", func(t *testing.T, kubeconfig string) {
			bin := steertest.Binary(t, "coredns")
			out, err := kubectl(t, c, "get", "configmap", "-n", "kube-system", "coredns", "-o", "jsonpath={.data.Corefile}")
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			dnsAddr, health, readyAddr, metrics := freePort(t), freePort(t), freePort(t), freePort(t)
			_, port, _ := net.SplitHostPort(dnsAddr)
			corefile := strings.NewReplacer(
				".:53 {", ".:"+port+" {\n    bind 127.0.0.1",
				"k8s_autopath cluster.local", "k8s_autopath cluster.local {\n        kubeconfig "+kubeconfig+"\n    }",
				"kubernetes cluster.local in-addr.arpa ip6.arpa {", "kubernetes cluster.local in-addr.arpa ip6.arpa {\n        kubeconfig "+kubeconfig,
				"health {", "health "+health+" {",
				"ready", "ready "+readyAddr,
				"prometheus :9153", "prometheus "+metrics,
				"forward . /etc/resolv.conf", "forward . "+upstream.Addr,
			).Replace(out)
			conf := filepath.Join(t.TempDir(), "Corefile")
			os.WriteFile(conf, []byte(corefile), 0o644)
			runUntil(t, "coredns", exec.Command(bin, "-conf", conf), func() bool { return httpOK(readyAddr, "/ready") })
		}, nil},
		{"pvtz-sync", func(t *testing.T, kubeconfig string) {
			bin := steertest.Binary(t, "pvtz-sync")
			health := freePort(t)
			cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--zone", "cluster.internal", "--create-zone", "--vpc-id", "vpc-rbac",
				"--endpoint", emu.URL, "--policy", "sync", "--owner-id", "rbac", "--metrics", "", "--health", health)
			cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID="+pvtztest.AccessKeyID,
				"ALIBABA_CLOUD_ACCESS_KEY_SECRET="+pvtztest.AccessKeySecret, "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true")
			runUntil(t, "pvtz-sync", cmd, func() bool { return httpOK(health, "/readyz") && emu.Writes() > 1 })
		}, []string{"create /events", "patch /events", "create events.k8s.io/events", "patch events.k8s.io/events"}},
		{"eni-agent", func(t *testing.T, kubeconfig string) {
			bin := steertest.Binary(t, "eni-agent")
			const node = "node-eni"
			if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// A vSwitch with 3 free addresses and --min-idle 5: the create
			// fails with InvalidVSwitchId.IpNotEnough, so the agent also
			// writes its Event and turns its node condition False.
			ecfg := ecs.DefaultConfig()
			ecfg.VSwitches = []ecs.VSwitchConfig{{ID: "vsw-rbac", CIDR: "10.219.0.0/29"}}
			ecfg.AttachDelay, ecfg.DetachDelay = 10*time.Millisecond, 10*time.Millisecond
			emu := ecstest.Start(t, openapi.Config{}, ecfg)
			dir, health := t.TempDir(), freePort(t)
			cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--node-name", node,
				"--endpoint", emu.URL, "--metadata-endpoint", emu.URL, "--socket", filepath.Join(dir, "eni-agent.sock"),
				"--state", filepath.Join(dir, "eni.db"), "--min-idle", "5", "--max-idle", "5", "--health", health)
			cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID="+ecstest.AccessKeyID,
				"ALIBABA_CLOUD_ACCESS_KEY_SECRET="+ecstest.AccessKeySecret, "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true")
			runUntil(t, "eni-agent", cmd, func() bool {
				if !httpOK(health, "/readyz") {
					return false
				}
				n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
				if err != nil || !slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
					return c.Type == "DNSAccelENIPool" && c.Status == corev1.ConditionFalse && c.Reason == "VSwitchIPNotEnough"
				}) {
					return false
				}
				evs, err := c.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node})
				return err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool { return e.Reason == "ENIAddressShortage" })
			})
		}, nil},
		{"datapath-agent", func(t *testing.T, kubeconfig string) {
			// The programs attach to an empty cgroup of the test's own,
			// pins go to a private bpffs: the node is not touched.
			cg, bpffs := svctest.EmptyCgroup(t), steertest.BPFFS(t)
			bin := steertest.Binary(t, "datapath-agent")
			const node = "node-datapath"
			if _, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// An SCTP port is skipped with an Event.
			if _, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "sctp"},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9, Protocol: corev1.ProtocolSCTP}}},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			health := freePort(t)
			runUntil(t, "datapath-agent", exec.Command(bin, "--kubeconfig", kubeconfig, "--node-name", node, "--cgroup", cg,
				"--bpffs", bpffs, "--lb-mode", "socket", "--metrics", "", "--health", health), func() bool {
				if !httpOK(health, "/readyz") {
					return false
				}
				evs, err := c.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=sctp"})
				return err == nil && slices.ContainsFunc(evs.Items, func(e corev1.Event) bool { return e.Reason == "UnsupportedProtocol" })
			})
			if out, err := exec.Command(bin, "--cleanup", "--bpffs", bpffs).CombinedOutput(); err != nil {
				t.Fatalf("datapath-agent --cleanup: %v\n%s", err, out)
			}
		}, []string{"patch /events"}},
	}
	for _, comp := range components {
		t.Run(comp.sa, func(t *testing.T) {
			comp.run(t, saKubeconfig(t, c, comp.sa))
			user := "system:serviceaccount:kube-system:" + comp.sa
			var reqs []request
			// The audit backend writes asynchronously: give it a moment
			// to flush what the component did.
			deadline := time.Now().Add(10 * time.Second)
			for {
				reqs = reqs[:0]
				for _, r := range readAudit(t, auditLog) {
					if r.User == user {
						reqs = append(reqs, r)
					}
				}
				unused := unusedGrants(without(grants(t, c, comp.sa), comp.onFailure), reqs)
				if len(unused) == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if len(reqs) == 0 {
				t.Fatalf("no requests from %s in the audit log", user)
			}
			for _, r := range reqs {
				if r.Code == http.StatusForbidden {
					t.Errorf("%s was refused: %s (a rule is missing)", comp.sa, r)
				}
			}
			if unused := unusedGrants(without(grants(t, c, comp.sa), comp.onFailure), reqs); len(unused) > 0 {
				t.Errorf("%s is granted what it never uses (least privilege): %v\nits requests: %v", comp.sa, unused, reqs)
			}
		})
	}
}

func unusedGrants(gs []string, reqs []request) []string {
	var out []string
	for _, g := range gs {
		if !covers(g, reqs) {
			out = append(out, g)
		}
	}
	return out
}

func without(gs, drop []string) []string {
	var out []string
	for _, g := range gs {
		if !slices.Contains(drop, g) {
			out = append(out, g)
		}
	}
	return out
}
