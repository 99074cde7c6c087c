// Package plugin is bin/eni-cni's logic: the CNI 1.1 operations (ADD, DEL,
// CHECK, STATUS, GC, VERSION) through containernetworking/cni's skel. It
// asks eni-agent for an address over the agent's unix socket (cni/api) and
// configures the pod with cni/netsetup.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"
)

// About is the VERSION/--help blurb.
const About = "eni-cni: pods on Alibaba Cloud ENI addresses (veth, ipvlan, exclusive) from eni-agent's pool"

// NetConf is the network configuration:
//
//	{"cniVersion":"1.1.0","name":"dnsaccel","type":"eni-cni","mode":"veth|ipvlan|exclusive",
//	 "agentSocket":"/run/dnsaccel/eni-agent.sock","nodeLocalDNS":"169.254.20.10"}
type NetConf struct {
	types.PluginConf
	Mode         api.Mode `json:"mode"`
	AgentSocket  string   `json:"agentSocket"`
	NodeLocalDNS string   `json:"nodeLocalDNS"`

	nodeLocalDNS netip.Addr
}

// Defaults.
const (
	DefaultMode = api.ModeVeth
	addTimeout  = 90 * time.Second
	opTimeout   = 30 * time.Second
)

// ParseConf reads and validates a network configuration; errors name the
// field.
func ParseConf(b []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("network configuration: %w", err)
	}
	if c.Mode == "" {
		c.Mode = DefaultMode
	}
	if !c.Mode.Valid() {
		return nil, fmt.Errorf("network configuration: \"mode\": %q is not veth, ipvlan or exclusive", c.Mode)
	}
	if c.AgentSocket == "" {
		c.AgentSocket = api.DefaultSocket
	}
	if c.NodeLocalDNS != "" {
		a, err := netip.ParseAddr(c.NodeLocalDNS)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("network configuration: \"nodeLocalDNS\": %q is not an IPv4 address", c.NodeLocalDNS)
		}
		c.nodeLocalDNS = a
	}
	return c, nil
}

// k8sArgs are the CNI_ARGS the kubelet passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Funcs returns the skel functions; Main runs them.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC}
}

// Main is bin/eni-cni's main.
func Main() {
	skel.PluginMainFuncs(Funcs(), version.All, About)
}

func confErr(err error) error {
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

// agentErr turns an agent failure into a CNI error with its code.
func agentErr(op string, socket string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return types.NewError(ae.Code, op+": "+ae.Msg, ae.Details)
	}
	if api.Unreachable(err) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: eni-agent unreachable at %s", op, socket), err.Error())
	}
	return types.NewError(types.ErrInternal, op, err.Error())
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return confErr(err)
	}
	ka := k8sArgs{}
	if args.Args != "" {
		if err := types.LoadArgs(args.Args, &ka); err != nil {
			return confErr(fmt.Errorf("CNI_ARGS: %w", err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	cl := api.NewClient(conf.AgentSocket)
	key := api.Key{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, err := cl.Alloc(ctx, api.AllocRequest{Key: key, Netns: args.Netns, PodNamespace: string(ka.K8S_POD_NAMESPACE), PodName: string(ka.K8S_POD_NAME), Mode: conf.Mode})
	if err != nil {
		return agentErr("allocating an address", conf.AgentSocket, err)
	}
	res, err := setup(conf, args, alloc)
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
		defer rcancel()
		if _, rerr := cl.Release(rctx, key); rerr != nil {
			err = fmt.Errorf("%w (and releasing %s: %v)", err, alloc.IP, rerr)
		}
		return types.NewError(types.ErrInternal, fmt.Sprintf("setting up %s in %s", args.IfName, args.Netns), err.Error())
	}
	out, err := toResult(conf, res)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult", err.Error())
	}
	return types.PrintResult(out, conf.CNIVersion)
}

func setup(conf *NetConf, args *skel.CmdArgs, alloc *api.Allocation) (*netsetup.Result, error) {
	podNS, closePod, err := netsetup.OpenNS(args.Netns)
	if err != nil {
		return nil, fmt.Errorf("opening netns %q: %w", args.Netns, err)
	}
	defer closePod()
	hostNS, closeHost, err := netsetup.CurrentNS()
	if err != nil {
		return nil, err
	}
	defer closeHost()
	return netsetup.Setup(netsetup.Config{Mode: conf.Mode, IfName: args.IfName, ContainerID: args.ContainerID, Alloc: *alloc,
		NodeLocalDNS: conf.nodeLocalDNS, HostNS: hostNS, PodNS: podNS, NL: netsetup.Kernel{}})
}

// toResult is the ADD result: a prevResult (eni-cni chained after another
// plugin) with this plugin's interfaces, address and routes added, else
// just those.
func toResult(conf *NetConf, r *netsetup.Result) (*current.Result, error) {
	res, err := prevResult(conf)
	if err != nil {
		return nil, err
	}
	if res == nil {
		res = &current.Result{}
	}
	res.CNIVersion = current.ImplementedSpecVersion
	if r.Host != nil {
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: r.Host.Name, Mac: r.Host.MAC})
	}
	res.Interfaces = append(res.Interfaces, &current.Interface{Name: r.Pod.Name, Mac: r.Pod.MAC, Sandbox: r.Pod.Sandbox})
	idx := len(res.Interfaces) - 1
	res.IPs = append(res.IPs, &current.IPConfig{
		Interface: &idx,
		Address:   net.IPNet{IP: net.IP(r.Addr.Addr().AsSlice()), Mask: net.CIDRMask(r.Addr.Bits(), 32)},
		Gateway:   net.IP(r.Gateway.AsSlice()),
	})
	for _, rt := range r.Routes {
		route := &types.Route{Dst: net.IPNet{IP: net.IP(rt.Dst.Addr().AsSlice()), Mask: net.CIDRMask(rt.Dst.Bits(), 32)}}
		if rt.GW.IsValid() {
			route.GW = net.IP(rt.GW.AsSlice())
		}
		res.Routes = append(res.Routes, route)
	}
	if conf.DNS.Nameservers != nil || conf.DNS.Domain != "" || conf.DNS.Search != nil || conf.DNS.Options != nil {
		res.DNS = conf.DNS
	}
	return res, nil
}

// prevResult is the prevResult (eni-cni chained after another plugin) in
// this version's form, nil if there is none. ParsePrevResult consumes
// RawPrevResult, so this keys on PrevResult and may be called again.
func prevResult(conf *NetConf) (*current.Result, error) {
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, err
	}
	if conf.PrevResult == nil {
		return nil, nil
	}
	return current.NewResultFromResult(conf.PrevResult)
}

// prevIP is the pod address in the prevResult, if any.
func prevIP(conf *NetConf) string {
	r, err := prevResult(conf)
	if err != nil || r == nil || len(r.IPs) == 0 {
		return ""
	}
	return r.IPs[0].Address.IP.String()
}

func openPodNS(path string) (netsetup.NS, func() error, error) {
	if path == "" {
		return nil, func() error { return nil }, nil
	}
	n, closeFn, err := netsetup.OpenNS(path)
	if err != nil {
		var gone ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &gone) || errors.As(err, &notNS) {
			return nil, func() error { return nil }, nil
		}
		return nil, nil, err
	}
	return n, closeFn, nil
}

// cmdDel tears the pod's interface down and releases its address; a DEL
// for something already gone succeeds.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return confErr(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cl := api.NewClient(conf.AgentSocket)
	key := api.Key{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, gerr := cl.Get(ctx, key)
	owner := netsetup.AddrOurs
	switch {
	case gerr == nil:
	case errors.Is(gerr, api.ErrNotFound):
		// Released already (an earlier DEL, GC, the leak loop): the
		// prevResult's address may be another pod's by now.
		alloc = &api.Allocation{Key: key, Mode: conf.Mode, IP: prevIP(conf)}
		if alloc.IP != "" {
			owner = addrOwner(ctx, cl, key, alloc.IP)
		}
	default:
		// The agent is down: undo the namespace side anyway, then ask the
		// runtime to retry so that the address is released too.
		_ = teardown(conf, args, &api.Allocation{Key: key, Mode: conf.Mode, IP: prevIP(conf)}, netsetup.AddrUnknown)
		return agentErr("looking up the allocation", conf.AgentSocket, gerr)
	}
	terr := teardown(conf, args, alloc, owner)
	if _, err := cl.Release(ctx, key); err != nil {
		return agentErr("releasing the address", conf.AgentSocket, err)
	}
	if terr != nil {
		return types.NewError(types.ErrInternal, "tearing down "+args.IfName, terr.Error())
	}
	return nil
}

// addrOwner asks the agent whether ip, no longer held under key, belongs
// to another attachment now.
func addrOwner(ctx context.Context, cl *api.Client, key api.Key, ip string) netsetup.AddrOwner {
	a, err := cl.Owner(ctx, ip)
	switch {
	case errors.Is(err, api.ErrNotFound):
		return netsetup.AddrOurs
	case err != nil:
		return netsetup.AddrUnknown
	case a.Key != key:
		return netsetup.AddrTaken
	}
	return netsetup.AddrOurs
}

func teardown(conf *NetConf, args *skel.CmdArgs, alloc *api.Allocation, owner netsetup.AddrOwner) error {
	podNS, closePod, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer closePod()
	hostNS, closeHost, err := netsetup.CurrentNS()
	if err != nil {
		return err
	}
	defer closeHost()
	mode := alloc.Mode
	if mode == "" {
		mode = conf.Mode
	}
	return netsetup.Teardown(netsetup.Config{Mode: mode, IfName: args.IfName, ContainerID: args.ContainerID, Alloc: *alloc,
		NodeLocalDNS: conf.nodeLocalDNS, HostNS: hostNS, PodNS: podNS, NL: netsetup.Kernel{}, Addr: owner})
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return confErr(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	alloc, err := api.NewClient(conf.AgentSocket).Get(ctx, api.Key{ContainerID: args.ContainerID, IfName: args.IfName})
	if errors.Is(err, api.ErrNotFound) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("no address allocated to %s/%s", args.ContainerID, args.IfName), "")
	}
	if err != nil {
		return agentErr("looking up the allocation", conf.AgentSocket, err)
	}
	if ip := prevIP(conf); ip != "" && ip != alloc.IP {
		return types.NewError(types.ErrInternal, fmt.Sprintf("prevResult has %s, the agent allocated %s", ip, alloc.IP), "")
	}
	podNS, closePod, err := netsetup.OpenNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInternal, "opening netns "+args.Netns, err.Error())
	}
	defer closePod()
	hostNS, closeHost, err := netsetup.CurrentNS()
	if err != nil {
		return err
	}
	defer closeHost()
	if err := netsetup.Check(netsetup.Config{Mode: alloc.Mode, IfName: args.IfName, ContainerID: args.ContainerID, Alloc: *alloc,
		NodeLocalDNS: conf.nodeLocalDNS, HostNS: hostNS, PodNS: podNS, NL: netsetup.Kernel{}}); err != nil {
		return types.NewError(types.ErrInternal, "CHECK "+args.IfName, err.Error())
	}
	return nil
}

// cmdStatus answers 50 when the pool cannot serve an ADD (or the agent is
// unreachable).
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return confErr(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := api.NewClient(conf.AgentSocket).Status(ctx, conf.Mode)
	if err != nil {
		return types.NewError(api.CodeUnavailable, "eni-agent not available at "+conf.AgentSocket, err.Error())
	}
	if !st.Ready {
		return types.NewError(api.CodeUnavailable, "the ENI address pool cannot serve an ADD", st.Reason)
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return confErr(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	valid := make([]api.Key, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.Key{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if _, err := api.NewClient(conf.AgentSocket).GC(ctx, valid); err != nil {
		return agentErr("GC", conf.AgentSocket, err)
	}
	return nil
}
