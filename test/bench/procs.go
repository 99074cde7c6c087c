package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports (the kernel fixes it in the
// ABI regardless of CONFIG_HZ).
const clockTicks = 100

// proc is a long-running child process (a DNS server) started by the harness.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// procSet tracks every long-running child so that all of them can be stopped
// on any exit path, including interrupts.
type procSet struct {
	mu    sync.Mutex
	procs []*proc
}

// start launches argv (optionally pinned with taskset to cpu, if cpu >= 0)
// in its own process group, with stdout and stderr going to logPath.
func (ps *procSet) start(name string, cpu int, env []string, logPath string, argv ...string) (*proc, error) {
	if cpu >= 0 {
		argv = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Stdin = nil
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, logFile: lf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop terminates the process group: SIGTERM, then SIGKILL after a grace
// period. It is safe to call more than once.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last few lines of the process's log, for errors.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// stopAll stops every process in the set, most recently started first.
func (ps *procSet) stopAll() {
	ps.mu.Lock()
	procs := ps.procs
	ps.procs = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p *proc) { defer wg.Done(); p.stop() }(procs[i])
	}
	wg.Wait()
}

// cpuTime returns utime+stime of the whole thread group (all threads, live
// and exited) of pid, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// comm (field 2) may contain spaces and parentheses: split after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// coreBusy returns the time one CPU spent running tasks so far (user, nice,
// system and steal from /proc/stat). Interrupt and softirq time are left out:
// on the server core they are mostly the loopback delivery of the server's
// own responses, not somebody else's work.
func coreBusy(cpu int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	// user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already included in user and nice.
	return procStatSum(b, fmt.Sprintf("cpu%d", cpu), 0, 1, 2, 7)
}

// machineSample is a reading of the whole machine's CPU time.
type machineSample struct {
	at    time.Duration // CLOCK_BOOTTIME
	cpus  int           // cpuN lines in /proc/stat: online CPUs
	idle  time.Duration // idle + iowait of all CPUs
	ticks time.Duration // user, nice, system, irq, softirq, steal of all CPUs
}

func sampleMachine() (machineSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineSample{}, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return machineSample{}, err
	}
	s := machineSample{at: time.Duration(ts.Nano())}
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			s.cpus++
		}
	}
	if s.idle, err = procStatSum(b, "cpu", 3, 4); err != nil {
		return s, err
	}
	s.ticks, err = procStatSum(b, "cpu", 0, 1, 2, 5, 6, 7)
	return s, err
}

// procStatSum sums the given fields (0 = user) of the line of cpu ("cpu"
// for the whole machine, "cpuN" for one CPU) of /proc/stat's content b.
func procStatSum(b []byte, cpu string, fields ...int) (time.Duration, error) {
	prefix := cpu + " "
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		var sum int64
		for i, f := range strings.Fields(l)[1:] {
			if slices.Contains(fields, i) {
				v, _ := strconv.ParseInt(f, 10, 64)
				sum += v
			}
		}
		return time.Duration(sum) * time.Second / clockTicks, nil
	}
	return 0, fmt.Errorf("no %q line in /proc/stat", prefix)
}

// rssPeak returns VmHWM (peak resident set size) of pid in bytes.
func rssPeak(pid int) int64 { return procStatusBytes(pid, "VmHWM:") }

// procStatusBytes returns a "kB" field of /proc/PID/status (such as VmHWM:
// or VmRSS:) in bytes, 0 if it cannot be read.
func procStatusBytes(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// portAlloc hands out loopback ports that are free for both UDP and TCP.
// Ports already handed out are never repeated within a run.
type portAlloc struct {
	used map[int]bool
}

func (pa *portAlloc) get() (int, error) {
	if pa.used == nil {
		pa.used = map[int]bool{}
	}
	for range 200 {
		tl, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		if pa.used[port] {
			continue
		}
		pa.used[port] = true
		return port, nil
	}
	return 0, errors.New("no free loopback port found")
}

// cpuMask is a CPU affinity mask as used by sched_{get,set}affinity.
type cpuMask [16]uint64 // 1024 CPUs

func (m *cpuMask) set(cpu int)      { m[cpu/64] |= 1 << (uint(cpu) % 64) }
func (m *cpuMask) has(cpu int) bool { return m[cpu/64]&(1<<(uint(cpu)%64)) != 0 }

func getAffinity(tid int) (cpuMask, error) {
	var m cpuMask
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return m, e
	}
	return m, nil
}

func setAffinity(tid int, m cpuMask) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return e
	}
	return nil
}

// pinSelf sets the affinity of every thread of this process to m (threads
// created later inherit it from their creator) and returns the previous mask.
func pinSelf(m cpuMask) (cpuMask, error) {
	old, err := getAffinity(0)
	if err != nil {
		return old, err
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return old, err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := setAffinity(tid, m); err != nil && !errors.Is(err, syscall.ESRCH) {
			return old, fmt.Errorf("sched_setaffinity(%d): %w", tid, err)
		}
	}
	return old, nil
}

// onlineCPUs returns the CPUs this process may run on.
func onlineCPUs() []int {
	m, err := getAffinity(0)
	if err != nil {
		return nil
	}
	var cpus []int
	for i := range len(m) * 64 {
		if m.has(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// runCmd runs a short-lived command (pinned to cpu when cpu >= 0) in its own
// process group, killing the group if ctx is cancelled, and returns its
// combined output.
func runCmd(ctx context.Context, cpu int, argv ...string) (string, error) {
	out, _, err := runCmdState(ctx, cpu, argv...)
	return out, err
}

// runCmdState is runCmd that also returns how the command ended (its CPU
// times among it), nil if it did not start.
func runCmdState(ctx context.Context, cpu int, argv ...string) (string, *os.ProcessState, error) {
	if cpu >= 0 {
		argv = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), cmd.ProcessState, ctx.Err()
	}
	if err != nil {
		return out.String(), cmd.ProcessState, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), cmd.ProcessState, nil
}
