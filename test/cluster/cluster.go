// Package cluster runs a real etcd + kube-apiserver for tests: no
// controller manager (unless WithControllerManager), scheduler or kubelet,
// so the API objects are exactly what tests write (see CreatePod,
// CreateService). Use Shared from tests with
// Main in TestMain for one server per test package, or Start/Stop directly.
package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ErrUnavailable is wrapped by Start errors caused by a missing prerequisite
// of the machine (etcd not installed, no Go toolchain to build
// kube-apiserver), as opposed to a failure of the harness or the code under
// test. Shared skips tests on such errors unless CI=true.
var ErrUnavailable = errors.New("prerequisite missing")

// DefaultServiceCIDR is the --service-cluster-ip-range of the API server.
// Addresses from it exist only as API objects; nothing routes them.
const DefaultServiceCIDR = "10.96.0.0/16"

// Default timeouts of Start.
const (
	etcdReadyTimeout      = 30 * time.Second
	apiserverReadyTimeout = 90 * time.Second
)

// Cluster is a running etcd + kube-apiserver pair. There is no controller
// manager, scheduler or kubelet: objects are only what tests write.
type Cluster struct {
	// Client is an admin (system:masters) clientset.
	Client kubernetes.Interface
	// RestConfig is the admin configuration behind Client; copy it
	// (rest.CopyConfig) before changing it.
	RestConfig *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the admin user.
	Kubeconfig string
	// URL is the API server address, https://127.0.0.1:<port>.
	URL string
	// Token is the admin bearer token.
	Token string
	// EtcdURL is the etcd client URL, http://127.0.0.1:<port>.
	EtcdURL string
	// ServiceCIDR is the --service-cluster-ip-range.
	ServiceCIDR string
	// Dir holds etcd data, certificates, keys and the process logs
	// (etcd.log, kube-apiserver.log). Removed by Stop unless
	// DNSACCEL_CLUSTER_KEEP is set.
	Dir string
	// StartupTime is how long Start took (after binaries were available).
	StartupTime time.Duration

	etcd, apiserver *proc
	// controllerManager runs only with WithControllerManager.
	controllerManager *proc
	stopOnce          sync.Once
}

type config struct {
	serviceCIDR     string
	extraArgs       []string
	serviceAccounts bool
	controllers     []string
}

// WithControllerManager also runs a real kube-controller-manager (built like
// kube-apiserver, see EnsureBinary) with only the given controllers
// (kube-controller-manager's --controllers names, e.g.
// "endpointslice-controller": EndpointSlices come from the pods matching a
// Service's selector, as in a cluster). Without it there is no controller
// manager. Its log is Dir/kube-controller-manager.log.
func WithControllerManager(controllers ...string) Option {
	return func(c *config) { c.controllers = append(c.controllers, controllers...) }
}

// Option configures Start.
type Option func(*config)

// WithServiceCIDR sets --service-cluster-ip-range (default DefaultServiceCIDR).
func WithServiceCIDR(cidr string) Option { return func(c *config) { c.serviceCIDR = cidr } }

// WithServiceAccountAdmission keeps the ServiceAccount admission plugin on
// (by default it is disabled, because no controller manager creates the
// "default" ServiceAccounts): for a cluster that runs kube-controller-manager
// and real pods, which need their service account token volumes
// (test/realnode).
func WithServiceAccountAdmission() Option { return func(c *config) { c.serviceAccounts = true } }

// WithAPIServerArgs appends extra kube-apiserver flags (later flags win).
func WithAPIServerArgs(args ...string) Option {
	return func(c *config) { c.extraArgs = append(c.extraArgs, args...) }
}

// EtcdPath returns the etcd binary: $DNSACCEL_ETCD, etcd in $PATH, or
// /usr/bin/etcd. The error wraps ErrUnavailable.
func EtcdPath() (string, error) {
	if p := os.Getenv(EnvEtcd); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("%w: etcd not found: %s=%s is not an executable file (install etcd with `apt-get install etcd-server`)", ErrUnavailable, EnvEtcd, p)
		}
		return p, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if isExecutable("/usr/bin/etcd") {
		return "/usr/bin/etcd", nil
	}
	return "", fmt.Errorf("%w: etcd is not installed (no etcd in $PATH or /usr/bin/etcd): run `apt-get install etcd-server` or set %s", ErrUnavailable, EnvEtcd)
}

// Start runs etcd and kube-apiserver on free loopback ports, waits until the
// API server is ready, and creates the default and kube-system namespaces.
// If kube-apiserver is not cached yet it is built first (see EnsureBinary).
// ctx bounds the start-up only; the processes run until Stop.
func Start(ctx context.Context, opts ...Option) (*Cluster, error) {
	cfg := config{serviceCIDR: DefaultServiceCIDR}
	for _, o := range opts {
		o(&cfg)
	}
	etcdBin, err := EtcdPath()
	if err != nil {
		return nil, err
	}
	apiBin, err := KubeAPIServerPath(ctx)
	if err != nil {
		return nil, err
	}
	sweepStaleDirs()
	// Ports are chosen by binding to :0 and releasing them; another process
	// may grab one in between, so a bind failure is retried with new ports.
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, cfg, etcdBin, apiBin)
		var pe *portInUseError
		if errors.As(err, &pe) && attempt < 3 && ctx.Err() == nil {
			continue
		}
		return c, err
	}
}

func start(ctx context.Context, cfg config, etcdBin, apiBin string) (_ *Cluster, retErr error) {
	t0 := time.Now()
	dir, err := os.MkdirTemp("", dataDirPattern)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, ServiceCIDR: cfg.serviceCIDR}
	defer func() {
		if retErr != nil {
			c.Stop()
		}
	}()
	if err := writeOwner(dir); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	clientPort, peerPort, securePort := ports[0], ports[1], ports[2]

	// etcd
	c.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	c.etcd, err = startProc("etcd", etcdBin, []string{
		"--name=dnsaccel",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + c.EtcdURL,
		"--advertise-client-urls=" + c.EtcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=dnsaccel=" + peerURL,
		"--initial-cluster-state=new",
		"--logger=zap",
		"--log-outputs=stderr",
	}, filepath.Join(dir, "etcd.log"))
	if err != nil {
		return nil, err
	}
	if err := c.waitEtcd(ctx); err != nil {
		return nil, err
	}

	// credentials
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	saKey, saPub, err := writeServiceAccountKey(dir)
	if err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	c.Token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(c.Token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}

	// kube-apiserver
	c.URL = "https://127.0.0.1:" + strconv.Itoa(securePort)
	args := []string{
		"--etcd-servers=" + c.EtcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(securePort),
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + cfg.serviceCIDR,
		"--allow-privileged=true",
		"--profiling=false",
		// The endpoints of the "kubernetes" Service would be the loopback
		// advertise address, which Endpoints validation rejects (logged
		// every 10s). Nothing here needs them.
		"--endpoint-reconciler-type=none",
	}
	if !cfg.serviceAccounts {
		// No controller manager creates the "default" ServiceAccounts.
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	args = append(args, cfg.extraArgs...)
	c.apiserver, err = startProc("kube-apiserver", apiBin, args, filepath.Join(dir, "kube-apiserver.log"))
	if err != nil {
		return nil, err
	}
	if err := c.waitAPIServer(ctx); err != nil {
		return nil, err
	}

	// clients
	ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
	if err != nil {
		return nil, fmt.Errorf("reading the API server certificate: %w", err)
	}
	c.RestConfig = &rest.Config{
		Host:            c.URL,
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             200,
		Burst:           400,
	}
	cs, err := kubernetes.NewForConfig(c.RestConfig)
	if err != nil {
		return nil, err
	}
	c.Client = cs
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.URL, ca, c.Token); err != nil {
		return nil, err
	}
	for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem} {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	if len(cfg.controllers) > 0 {
		if err := c.startControllerManager(ctx, cfg); err != nil {
			return nil, err
		}
	}
	c.StartupTime = time.Since(t0)
	return c, nil
}

// startControllerManager runs kube-controller-manager against the API
// server with the admin kubeconfig, no leader election and no serving port.
func (c *Cluster) startControllerManager(ctx context.Context, cfg config) error {
	bin, err := EnsureBinary(ctx, "kube-controller-manager")
	if err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--controllers=" + strings.Join(cfg.controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-cluster-ip-range=" + cfg.serviceCIDR,
		// Write EndpointSlice changes at once rather than batching them.
		"--endpointslice-updates-batch-period=0s",
		"--concurrent-service-endpoint-syncs=5",
		"--profiling=false",
	}
	c.controllerManager, err = startProc("kube-controller-manager", bin, args, filepath.Join(c.Dir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	// Ready when its informers run: give it a moment and make sure it
	// did not exit on a flag.
	select {
	case <-c.controllerManager.done:
		return c.controllerManager.exitError()
	case <-time.After(time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Stop kills kube-apiserver and etcd (their whole process groups) and removes
// Dir. It is safe to call more than once.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	c.stopOnce.Do(func() {
		c.controllerManager.kill()
		c.apiserver.kill()
		c.etcd.kill()
		if c.Dir == "" {
			return
		}
		if keep, _ := strconv.ParseBool(os.Getenv(EnvKeep)); keep {
			os.Remove(filepath.Join(c.Dir, ownerFile))
			os.WriteFile(filepath.Join(c.Dir, "kept"), nil, 0o644)
			fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: kept %s (%s)\n", c.Dir, EnvKeep)
			return
		}
		os.RemoveAll(c.Dir)
	})
}

// Check returns an error (with the tail of its log) if etcd or
// kube-apiserver has exited.
func (c *Cluster) Check() error {
	for _, p := range []*proc{c.etcd, c.apiserver, c.controllerManager} {
		if p != nil && p.exited() {
			return p.exitError()
		}
	}
	return nil
}

// LogTail returns the last n lines of the etcd and kube-apiserver logs, for
// failure messages.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []*proc{c.etcd, c.apiserver, c.controllerManager} {
		if p != nil {
			fmt.Fprintf(&b, "==> %s <==\n%s\n", p.logPath, fileTail(p.logPath, n))
		}
	}
	return b.String()
}

func (c *Cluster) waitEtcd(ctx context.Context) error {
	url := c.EtcdURL + "/health"
	hc := &http.Client{Timeout: 2 * time.Second}
	var last string
	err := poll(ctx, etcdReadyTimeout, 100*time.Millisecond, func() (bool, error) {
		if c.etcd.exited() {
			return false, c.etcd.exitError()
		}
		resp, err := hc.Get(url)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"true"`), nil
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("etcd did not become healthy: %w; last GET %s: %s; etcd.log tail:\n%s", err, url, last, fileTail(c.etcd.logPath, 20))
	}
	if err != nil {
		return fmt.Errorf("etcd did not become healthy: %w", err)
	}
	return nil
}

func (c *Cluster) waitAPIServer(ctx context.Context) error {
	url := c.URL + "/readyz?verbose"
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // polling only
	}
	defer hc.CloseIdleConnections()
	var last string
	err := poll(ctx, apiserverReadyTimeout, 250*time.Millisecond, func() (bool, error) {
		if c.etcd.exited() {
			return false, c.etcd.exitError()
		}
		if c.apiserver.exited() {
			return false, c.apiserver.exitError()
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		last = fmt.Sprintf("HTTP %d:\n%s", resp.StatusCode, failedChecks(string(body)))
		return resp.StatusCode == http.StatusOK, nil
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("kube-apiserver did not become ready: %w; last GET %s: %s\nkube-apiserver.log tail:\n%s", err, url, last, fileTail(c.apiserver.logPath, 30))
	}
	if err != nil {
		return fmt.Errorf("kube-apiserver did not become ready: %w", err)
	}
	return nil
}

// failedChecks keeps the failing lines of a verbose /readyz body (all of it
// if none is marked failed).
func failedChecks(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") || strings.Contains(l, "failed") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return tail(body, 20)
	}
	return strings.Join(out, "\n")
}

var errPollTimeout = errors.New("timed out")

// poll calls cond every interval until it returns true or an error, ctx is
// done or timeout elapses.
func poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %s (%v)", errPollTimeout, timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeServiceAccountKey(dir string) (keyPath, pubPath string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyPath = filepath.Join(dir, "sa.key")
	pubPath = filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, nil
}

func writeKubeconfig(path, server string, ca []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["dnsaccel-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["dnsaccel-test"] = &clientcmdapi.Context{Cluster: "dnsaccel-test", AuthInfo: "admin", Namespace: metav1.NamespaceDefault}
	cfg.CurrentContext = "dnsaccel-test"
	return clientcmd.WriteToFile(*cfg, path)
}
