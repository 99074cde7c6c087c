// Command realnode brings the real test node of test/realnode up and down
// (`make realnode-up`, `make realnode-down`).
//
//	realnode up            bring the node up, print how to reach it, keep it up until
//	                       SIGINT/SIGTERM, then tear it down
//	realnode up --detach   the same in the background: returns once the node is up
//	realnode down          stop a running node (it tears itself down) and sweep what
//	                       a killed one left
//	realnode import        import the image tars of --images into the running node
//	realnode containerd    build containerd into the cache (done by up when missing)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/dnsaccel/dnsaccel/test/realnode"
)

func main() {
	fs := pflag.NewFlagSet("realnode", pflag.ContinueOnError)
	binDir := fs.String("bin", "", "DIR with make build's binaries (default: bin/ of the repository)")
	images := fs.String("images", "", "DIR with make images' tars (default: <bin>/images)")
	detach := fs.Bool("detach", false, "up: run the node in the background (log in $TMPDIR/dnsaccel-realnode-up.log) and return once it is up")
	readyFile := fs.String("ready-file", "", "up: write the kubeconfig path to FILE once the node is up (used by --detach)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: realnode up [--detach] | down | import | containerd [flags]\n\n"+
			"A real Kubernetes node on this machine (kubelet + containerd, test/realnode):\n"+
			"then `kubectl apply -k manifests/overlays/realnode`.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		os.Exit(2)
	}
	opt := realnode.Options{BinDir: *binDir, ImagesDir: *images, Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }}
	var err error
	switch fs.Arg(0) {
	case "up":
		if *detach {
			err = upDetached(os.Args[1:])
		} else {
			err = up(opt, *readyFile)
		}
	case "down":
		err = down()
	case "import":
		err = importImages(opt)
	case "containerd":
		var dir string
		if dir, err = realnode.EnsureContainerd(context.Background()); err == nil {
			fmt.Println(dir)
		}
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnode:", err)
		os.Exit(1)
	}
}

func up(opt realnode.Options, readyFile string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	n, err := realnode.Up(ctx, opt)
	if err != nil {
		return err
	}
	fmt.Printf("node %s up in %s (kubelet + containerd %s, Kubernetes %s)\n", realnode.NodeName, time.Since(t0).Round(time.Millisecond), realnode.ContainerdVersion, "v1.36.3")
	fmt.Printf("  export KUBECONFIG=%s\n", n.Kubeconfig)
	fmt.Printf("  kubectl get nodes -o wide\n  kubectl apply -k manifests/overlays/realnode\n")
	fmt.Printf("  ctr --address %s -n k8s.io images ls   (ctr: %s)\n", n.ContainerdSocket, n.Ctr)
	fmt.Printf("  logs: %s\n", n.Dir)
	if readyFile != "" {
		if err := os.WriteFile(readyFile, []byte(n.Kubeconfig+"\n"+n.Dir+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			if err := n.Check(); err != nil {
				fmt.Fprintf(os.Stderr, "realnode: %v\n", err)
				stop()
			}
		}
	}
	fmt.Fprintln(os.Stderr, "realnode: tearing down")
	return n.Down()
}

// upDetached re-runs `realnode up` in its own session with its output in a
// log file, and waits until it is up (or has failed).
func upDetached(args []string) error {
	logPath := filepath.Join(os.TempDir(), "dnsaccel-realnode-up.log")
	ready := filepath.Join(os.TempDir(), fmt.Sprintf("dnsaccel-realnode-ready-%d", os.Getpid()))
	defer os.Remove(ready)
	var rest []string
	for _, a := range args {
		if a != "--detach" && a != "--detach=true" {
			rest = append(rest, a)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(exe, append(rest, "--ready-file", ready)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("realnode up exited (%v):\n%s", err, b)
		case <-time.After(250 * time.Millisecond):
		}
		if _, err := os.Stat(ready); err == nil {
			b, _ := os.ReadFile(logPath)
			fmt.Print(string(b))
			fmt.Printf("  (running as pid %d; log %s; stop with `make realnode-down`)\n", cmd.Process.Pid, logPath)
			return nil
		}
	}
}

type state struct {
	Pid int    `json:"pid"`
	Dir string `json:"dir"`
}

func readState() (state, error) {
	var st state
	b, err := os.ReadFile(realnode.HostDir + ".json")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// down stops the running node's process (SIGTERM: it tears the node down)
// and then sweeps what is left, taking the node lock.
func down() error {
	if st, err := readState(); err == nil && st.Pid > 0 {
		if p, err := os.FindProcess(st.Pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
			fmt.Printf("stopping the node (pid %d)...\n", st.Pid)
			_ = p.Signal(syscall.SIGTERM)
			deadline := time.Now().Add(4 * time.Minute)
			for p.Signal(syscall.Signal(0)) == nil && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := realnode.Sweep(ctx); err != nil {
		return err
	}
	if left := realnode.Leftovers(); len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	fmt.Println("node down: nothing left")
	return nil
}

func importImages(opt realnode.Options) error {
	st, err := readState()
	if err != nil {
		return fmt.Errorf("no running node (%v)", err)
	}
	dir := opt.ImagesDir
	if dir == "" {
		bin := opt.BinDir
		if bin == "" {
			if bin, err = realnode.DefaultBinDir(); err != nil {
				return err
			}
		}
		dir = filepath.Join(bin, "images")
	}
	ctrDir, err := realnode.ContainerdDir()
	if err != nil {
		return err
	}
	refs, err := realnode.ImportImages(context.Background(), filepath.Join(ctrDir, "ctr"), filepath.Join(st.Dir, "containerd", "containerd.sock"), dir)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(os.Stdout)
	for _, r := range refs {
		fmt.Fprintln(w, r)
	}
	return w.Flush()
}
