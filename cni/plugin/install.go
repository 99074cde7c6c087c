package plugin

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

// Install is `eni-cni install`: the DaemonSet's init container copies the
// running binary into the host's CNI bin directory and writes the network
// configuration list into its CNI configuration directory, each through a
// temporary file and a rename, so the runtime never sees half a file. The
// list is validated first (its eni-cni entry as ADD would read it);
// nothing is written if it is bad. It works in a distroless image (no cp,
// no shell).
func Install(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("eni-cni install", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory (mounted)")
	confDir := fs.String("conf-dir", "/host/etc/cni/net.d", "the host's CNI configuration directory (mounted)")
	conflist := fs.String("conflist", "/etc/eni-cni/10-dnsaccel.conflist", "the network configuration list to install (its file name is kept)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	b, err := os.ReadFile(*conflist)
	if err != nil {
		return fmt.Errorf("--conflist: %w", err)
	}
	if err := validateConfList(b); err != nil {
		return fmt.Errorf("--conflist %s: %w", *conflist, err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the eni-cni binary: %w", err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("reading %s: %w", self, err)
	}
	dst := filepath.Join(*binDir, "eni-cni")
	if err := writeAtomic(dst, bin, 0o755); err != nil {
		return fmt.Errorf("--bin-dir: %w", err)
	}
	fmt.Fprintf(stdout, "installed %s\n", dst)
	conf := filepath.Join(*confDir, filepath.Base(*conflist))
	if err := writeAtomic(conf, b, 0o644); err != nil {
		return fmt.Errorf("--conf-dir: %w", err)
	}
	fmt.Fprintf(stdout, "installed %s\n", conf)
	return nil
}

// validateConfList checks a configuration list the way the runtime and
// eni-cni will read it: a list with a name, and an eni-cni plugin whose
// keys ParseConf accepts.
func validateConfList(b []byte) error {
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return err
	}
	found := false
	for i, p := range list.Plugins {
		if p.Network.Type != "eni-cni" {
			continue
		}
		found = true
		// ADD sees the plugin's entry with the list's name and version.
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			return fmt.Errorf("plugins[%d]: %w", i, err)
		}
		m["name"], m["cniVersion"] = list.Name, list.CNIVersion
		pb, _ := json.Marshal(m)
		if _, err := ParseConf(pb); err != nil {
			return fmt.Errorf("plugins[%d]: %w", i, err)
		}
	}
	if !found {
		return errors.New(`"plugins": no plugin of "type": "eni-cni"`)
	}
	return nil
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing to remove
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
