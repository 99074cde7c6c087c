// Command images assembles dnsaccel's container images without a Docker
// engine or a registry (`make images`): for each binary of bin/ an image of
// a small base layer (/etc/passwd and /etc/group with root and nonroot
// 65532, /tmp, the host's CA bundle) and one layer with the static binary
// as its entrypoint, the user as build/Dockerfile's stage has it; a pause
// image (build/pause, static); and dnsaccel/dnstools, glibc's getent, dig,
// sh and sleep copied from this host with the shared libraries they load,
// for test pods that resolve names as applications do. Each image is
// written as a docker-archive tar (go-containerregistry) to --out, which
// `ctr images import` reads; the references are those the manifests use
// (docker.io/dnsaccel/<name>:latest and :<tag>,
// localhost:5000/dnsaccel/<name>:<tag>), so that they resolve unchanged on
// a node with imagePullPolicy IfNotPresent.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/pflag"
)

// Binaries and the user their image runs as (as in build/Dockerfile):
// "" is root (node-cache, eni-agent and eni-cni need it), 65532 nonroot.
//
// caps are file capabilities of the binary: the central CoreDNS runs as
// 65532 and binds port 53, which a non-root process can do only with
// cap_net_bind_service in its file's permitted set (as the upstream CoreDNS
// image sets it); the capability granted by the Deployment alone is lost at
// execve.
var binaries = []struct {
	name, user string
	caps       []int
}{
	{"coredns", "65532:65532", []int{capNetBindService}},
	{"node-cache", "", nil},
	{"pvtz-sync", "65532:65532", nil},
	{"pvtzctl", "65532:65532", nil},
	{"cloud-emulator", "65532:65532", nil},
	{"eni-agent", "", nil},
	{"eni-cni", "", nil},
	{"datapath-agent", "", nil},
	{"pvtz-webhook", "65532:65532", nil},
	{"dnsaccelctl", "65532:65532", nil},
}

// pauseRefs name the sandbox image (test/realnode pins the first; the
// kubelet and the e2e suite of 1.36 know 3.10.2).
var pauseRefs = []string{"registry.k8s.io/pause:3.10.1", "registry.k8s.io/pause:3.10.2", "registry.k8s.io/pause:3.10"}

// dnstools: host programs copied into dnsaccel/dnstools with their
// libraries.
var dnstools = map[string]string{ // path in the image: path on the host
	"/bin/sh":         "/bin/sh",
	"/bin/sleep":      "/bin/sleep",
	"/bin/cat":        "/bin/cat",
	"/usr/bin/getent": "/usr/bin/getent",
	"/usr/bin/dig":    "/usr/bin/dig",
}

// epoch is every file's and image's time: the same inputs give the same
// image digests.
var epoch = time.Unix(0, 0).UTC()

func main() {
	fs := pflag.NewFlagSet("images", pflag.ContinueOnError)
	binDir := fs.String("bin", "bin", "DIR holding the binaries (make build)")
	out := fs.String("out", "bin/images", "DIR the image tars are written to")
	tag := fs.String("tag", "dev", "tag of the images besides latest")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: go run ./build/images [flags]\n\nAssembles dnsaccel's images (one layer per binary, a pause image, dnsaccel/dnstools)\nas docker-archive tars, without Docker. Import one with\n  ctr -n k8s.io images import bin/images/node-cache.tar\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	if err := run(*binDir, *out, *tag); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(binDir, out, tag string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	base, err := baseLayer()
	if err != nil {
		return err
	}
	for _, b := range binaries {
		bin := filepath.Join(binDir, b.name)
		l, err := fileLayerCaps(map[string]string{"/" + b.name: bin}, map[string][]int{"/" + b.name: b.caps})
		if err != nil {
			return fmt.Errorf("%s (run make build first): %w", b.name, err)
		}
		img, err := image([]v1.Layer{base, l}, v1.Config{Entrypoint: []string{"/" + b.name}, User: b.user})
		if err != nil {
			return err
		}
		refs := []string{"docker.io/dnsaccel/" + b.name + ":latest", "docker.io/dnsaccel/" + b.name + ":" + tag, "localhost:5000/dnsaccel/" + b.name + ":" + tag}
		if err := write(filepath.Join(out, b.name+".tar"), img, refs); err != nil {
			return err
		}
	}
	// pause, built here, statically.
	tmp, err := os.MkdirTemp("", "dnsaccel-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	pause := filepath.Join(tmp, "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", pause, "./build/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building build/pause: %v\n%s", err, o)
	}
	pl, err := fileLayer(map[string]string{"/pause": pause})
	if err != nil {
		return err
	}
	img, err := image([]v1.Layer{pl}, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"})
	if err != nil {
		return err
	}
	if err := write(filepath.Join(out, "pause.tar"), img, pauseRefs); err != nil {
		return err
	}
	// dnstools: glibc programs of this host with their libraries.
	files := map[string]string{}
	for in, host := range dnstools {
		files[in] = host
		libs, err := sharedLibs(host)
		if err != nil {
			return err
		}
		for _, l := range libs {
			files[l] = l
		}
	}
	tl, err := fileLayer(files)
	if err != nil {
		return err
	}
	img, err = image([]v1.Layer{base, tl}, v1.Config{Cmd: []string{"/bin/sleep", "infinity"}})
	if err != nil {
		return err
	}
	return write(filepath.Join(out, "dnstools.tar"), img, []string{"docker.io/dnsaccel/dnstools:latest", "docker.io/dnsaccel/dnstools:" + tag})
}

func image(layers []v1.Layer, cfg v1.Config) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cfg.Env = append(cfg.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if cfg.WorkingDir == "" {
		cfg.WorkingDir = "/"
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	return mutate.ConfigFile(img, cf)
}

func write(path string, img v1.Image, refs []string) error {
	m := map[name.Reference]v1.Image{}
	for _, r := range refs {
		t, err := name.NewTag(r)
		if err != nil {
			return err
		}
		m[t] = img
	}
	tmp := path + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, m); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	d, _ := img.Digest()
	fmt.Printf("%-32s %s  %s\n", filepath.Base(path), d.String()[:19], strings.Join(refs, " "))
	return os.Rename(tmp, path)
}

// baseLayer: /etc/passwd, /etc/group, /etc/nsswitch.conf, /tmp and the
// host's CA bundle (for HTTPS endpoints).
func baseLayer() (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(p string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: mode, ModTime: epoch})
	}
	file := func(p string, mode int64, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []string{"/etc", "/etc/ssl", "/etc/ssl/certs"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("/tmp", 0o1777); err != nil {
		return nil, err
	}
	if err := file("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")); err != nil {
		return nil, err
	}
	if err := file("/etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n")); err != nil {
		return nil, err
	}
	if err := file("/etc/nsswitch.conf", 0o644, []byte("hosts: files dns\n")); err != nil {
		return nil, err
	}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		if err := file("/etc/ssl/certs/ca-certificates.crt", 0o644, ca); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return layerOf(buf.Bytes())
}

// fileLayer holds the given host files (image path: host path, symlinks
// followed), executable, with their parent directories.
func fileLayer(files map[string]string) (v1.Layer, error) { return fileLayerCaps(files, nil) }

// capNetBindService is CAP_NET_BIND_SERVICE.
const capNetBindService = 10

// fileCaps is the security.capability extended attribute (struct
// vfs_cap_data, revision 2) giving caps permitted and effective, as
// `setcap cap_...=+ep` writes it; containerd applies it when unpacking
// (the tar's SCHILY.xattr record).
func fileCaps(caps []int) string {
	var perm [2]uint32
	for _, c := range caps {
		perm[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x1) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	binary.LittleEndian.PutUint32(b[4:], perm[0])
	binary.LittleEndian.PutUint32(b[12:], perm[1])
	return string(b)
}

// fileLayerCaps is fileLayer with file capabilities for some files.
func fileLayerCaps(files map[string]string, caps map[string][]int) (v1.Layer, error) {
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, p := range paths {
		var parents []string
		for d := filepath.Dir(p); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			parents = append(parents, d)
			dirs[d] = true
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(parents[i], "/") + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		b, err := os.ReadFile(files[p])
		if err != nil {
			return nil, err
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if c := caps[p]; len(c) > 0 {
			h.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": fileCaps(c)}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return layerOf(buf.Bytes())
}

func layerOf(b []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// lddLine matches "libx.so => /path (0x...)" and "/lib64/ld-linux... (0x...)".
var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// sharedLibs lists the shared libraries (and the loader) a host program
// loads, as ldd reports them.
func sharedLibs(prog string) ([]string, error) {
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", prog, err)
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		if m := lddLine.FindStringSubmatch(l); m != nil {
			libs = append(libs, m[1])
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s: no libraries found in %q", prog, out)
	}
	return libs, nil
}
