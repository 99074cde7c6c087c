package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	sdkpvtz "github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz"
	"github.com/miekg/dns"
)

// The binary: flags, the "listening" line, state across a restart, DNS,
// the request log file.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "cloud-emulator")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	state, reqlog := filepath.Join(dir, "state.json"), filepath.Join(dir, "requests.jsonl")
	dnsAddr := freeUDP(t)
	start := func() (string, func()) {
		cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--access-key-id", "AKID", "--access-key-secret", "SECRET",
			"--state", state, "--dns", dnsAddr, "--request-log", reqlog)
		stderr, _ := cmd.StderrPipe()
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		addr := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				var l struct{ Msg, Addr string }
				if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" {
					addr <- l.Addr
				}
			}
		}()
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("exit: %v", err)
				}
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				t.Error("no exit after SIGTERM")
			}
		}
		select {
		case a := <-addr:
			return a, stop
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatal("no listening line")
		}
		return "", nil
	}
	addr, stop := start()
	c, err := sdkpvtz.NewClientWithAccessKey("cn-hangzhou", "AKID", "SECRET")
	if err != nil {
		t.Fatal(err)
	}
	c.Domain = addr
	z := sdkpvtz.CreateAddZoneRequest()
	z.ZoneName = "bin.internal"
	zr, err := c.AddZone(z)
	if err != nil {
		t.Fatal(err)
	}
	r := sdkpvtz.CreateAddZoneRecordRequest()
	r.ZoneId, r.Rr, r.Type, r.Value, r.Ttl = zr.ZoneId, "www", "A", "10.1.2.3", requests.NewInteger(30)
	if _, err := c.AddZoneRecord(r); err != nil {
		t.Fatal(err)
	}
	stop()

	addr, stop = start()
	defer stop()
	c.Domain = addr
	lr := sdkpvtz.CreateDescribeZoneRecordsRequest()
	lr.ZoneId = zr.ZoneId
	recs, err := c.DescribeZoneRecords(lr)
	if err != nil || recs.TotalItems != 1 {
		t.Fatalf("after restart: %+v %v", recs, err)
	}
	m := new(dns.Msg)
	m.SetQuestion("www.bin.internal.", dns.TypeA)
	var ans *dns.Msg
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ans, err = dns.Exchange(m, dnsAddr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	if err != nil || len(ans.Answer) != 1 || ans.Answer[0].(*dns.A).A.String() != "10.1.2.3" {
		t.Fatalf("dns: %v %v", ans, err)
	}
	f, err := os.Open(reqlog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	if strings.Count(string(b), "\n") < 3 || strings.Contains(string(b), "SECRET") || !strings.Contains(string(b), `"action":"AddZoneRecord"`) {
		t.Fatalf("request log:\n%s", b)
	}
}

func freeUDP(t *testing.T) string {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		pc.Close()
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}
