package steertest

import (
	"crypto/rand"
	"fmt"
	"os"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TrackConnections makes a network namespace (netnsFd; 0: the caller's)
// track connections while the test runs, as a node with kube-proxy's nat
// rules does: a rule with a ct expression in an nftables table of the
// test's own (conntrack's hooks are registered per namespace, on demand).
// Skips where nftables is not available.
func TrackConnections(t testing.TB, netnsFd int) {
	t.Helper()
	var opts []nftables.ConnOption
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	rand.Read(b[:])
	tb := c.AddTable(&nftables.Table{Name: fmt.Sprintf("dnsaccel-test-ct-%d-%x", os.Getpid(), b), Family: nftables.TableFamilyINet})
	for _, hook := range []*nftables.ChainHook{nftables.ChainHookPrerouting, nftables.ChainHookOutput} {
		ch := c.AddChain(&nftables.Chain{Name: fmt.Sprintf("h%d", *hook), Table: tb, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: nftables.ChainPriorityFilter})
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{byte(expr.CtStateBitNEW), 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Counter{},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Skipf("nftables not available: %v", err)
	}
	t.Cleanup(func() {
		c.DelTable(tb)
		if err := c.Flush(); err != nil {
			t.Errorf("removing table inet %s: %v", tb.Name, err)
		}
	})
}
