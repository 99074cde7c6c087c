// Package ctl is pvtzctl: an admin's kubectl-like view of a PrivateZone
// zone the sync manages — zones, records (by owner, namespace, type), the
// diff between what the cluster wants and what the zone has, owners and the
// change log. Exit codes: 0 clean, 1 drift (diff), 2 error.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
	"github.com/dnsaccel/dnsaccel/externaldns/source"
)

const usage = `Usage: pvtzctl COMMAND [ARGS] [flags]

An admin's view of PrivateZone zones managed by pvtz-sync.

Commands:
  zones                                   zones with their record counts and VPCs
  records ZONE [--owner ID] [--namespace NS] [--type T]
                                          the zone's records with owner and resource
  diff ZONE --kubeconfig F                what the cluster wants vs what the zone has
                                          (exit 1 when they differ)
  owners ZONE                             records per owner id
  changelog ZONE [--limit N]              the zone's change log, newest first

ZONE is a zone name (or id). Exit codes: 0 clean, 1 drift (diff), 2 error.
Credentials: as pvtz-sync, the SDK's default chain (ALIBABA_CLOUD_ACCESS_KEY_ID, ...).

Flags:
`

// API is what pvtzctl calls on PrivateZone: *provider.Provider, or
// provider/inmemory in tests.
type API interface {
	FindZone(ctx context.Context, name, vpcID string) (string, error)
	ZoneInfo(ctx context.Context, zoneID string) (provider.Zone, error)
	ZonesWithVPCs(ctx context.Context) ([]provider.Zone, error)
	Records(ctx context.Context, zoneID, keyword string) ([]endpoint.Record, error)
	ChangeLogs(ctx context.Context, zoneID string, limit int) ([]provider.ChangeLog, error)
}

var _ API = (*provider.Provider)(nil)

// deps are pvtzctl's outside parts: the PrivateZone client and the
// Kubernetes client (diff), built from the flags.
type deps struct {
	api  func(provider.Config) (API, error)
	kube func(kubeconfig string) (kubernetes.Interface, error)
}

var realDeps = deps{
	api: func(cfg provider.Config) (API, error) { return provider.New(cfg) },
	kube: func(kubeconfig string) (kubernetes.Interface, error) {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		return cs, nil
	},
}

// Main runs pvtzctl with args (without the program name) and returns the
// exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, realDeps, args, stdout, stderr)
}

func run(ctx context.Context, d deps, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("pvtzctl", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	endpointURL := fs.String("endpoint", provider.DefaultEndpoint, "PrivateZone OpenAPI endpoint URL")
	region := fs.String("region", "cn-hangzhou", "region of the SDK client")
	vpcID := fs.String("vpc-id", "", "pick the zone bound to this VPC among same-named ones")
	out := fs.StringP("output", "o", "table", "output format: table, json, yaml")
	owner := fs.String("owner", "", "records: only this owner id (\"-\" for records without an owner)")
	ns := fs.String("namespace", "", "records: only records of resources in this namespace; diff: only this namespace's objects")
	typ := fs.String("type", "", "records: only this record type")
	kubeconfig := fs.String("kubeconfig", "", "diff: kubeconfig of the cluster")
	ownerID := fs.String("owner-id", "default", "diff: the sync's --owner-id")
	tmpl := fs.String("fqdn-template", source.DefaultFQDNTemplate, "diff: the sync's --fqdn-template")
	ttl := fs.Int("ttl", 60, "diff: the sync's --ttl")
	src := fs.String("source", "service,pod", "diff: the sync's --source")
	limit := fs.Int("limit", 50, "changelog: at most this many entries (0: all)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "pvtzctl: %v\n", err) // pflag does not print it with ContinueOnError
		return 2
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "pvtzctl: %v\n", err); return 2 }
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	if *out != "table" && *out != "json" && *out != "yaml" {
		return fail(fmt.Errorf("-o %q: want table, json or yaml", *out))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	p, err := d.api(provider.Config{Endpoint: *endpointURL, Region: *region, MaxAttempts: 6,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return fail(err)
	}
	needZone := func() (string, string, error) {
		if len(rest) < 2 {
			return "", "", fmt.Errorf("%s: ZONE is required", rest[0])
		}
		name := rest[1]
		id, err := p.FindZone(ctx, name, *vpcID)
		if err != nil {
			return "", "", err
		}
		if id == "" {
			z, err := p.ZoneInfo(ctx, name)
			if err != nil {
				return "", "", fmt.Errorf("zone %s not found", name)
			}
			return z.ID, z.Name, nil
		}
		return id, endpoint.NormalizeName(name), nil
	}
	w := &writer{out: stdout, format: *out}
	switch rest[0] {
	case "zones":
		zs, err := p.ZonesWithVPCs(ctx)
		if err != nil {
			return fail(err)
		}
		rows := make([]zoneRow, 0, len(zs))
		for _, z := range zs {
			rows = append(rows, zoneRow{ID: z.ID, Name: z.Name, Records: z.RecordCount, VPCs: z.VPCs})
		}
		return w.write(rows, []string{"ZONE-ID", "NAME", "RECORDS", "VPCS"}, func(r zoneRow) []string {
			return []string{r.ID, r.Name, fmt.Sprint(r.Records), strings.Join(r.VPCs, ",")}
		})
	case "records":
		id, _, err := needZone()
		if err != nil {
			return fail(err)
		}
		recs, err := p.Records(ctx, id, "")
		if err != nil {
			return fail(err)
		}
		var rows []recordRow
		for _, r := range recs {
			row := toRow(r)
			if *owner != "" && (*owner == "-" && row.Owner != "" || *owner != "-" && row.Owner != *owner) ||
				*ns != "" && registry.Namespace(row.Resource) != *ns || *typ != "" && !strings.EqualFold(r.Type, *typ) {
				continue
			}
			rows = append(rows, row)
		}
		sortRows(rows)
		return w.write(rows, []string{"NAME", "TYPE", "VALUE", "TTL", "STATUS", "OWNER", "RESOURCE", "ID"}, func(r recordRow) []string {
			return []string{r.Name, r.Type, r.Value, fmt.Sprint(r.TTL), r.Status, dash(r.Owner), dash(r.Resource), fmt.Sprint(r.ID)}
		})
	case "owners":
		id, _, err := needZone()
		if err != nil {
			return fail(err)
		}
		recs, err := p.Records(ctx, id, "")
		if err != nil {
			return fail(err)
		}
		by := map[string]*ownerRow{}
		for _, r := range recs {
			row := toRow(r)
			o := by[row.Owner]
			if o == nil {
				o = &ownerRow{Owner: row.Owner}
				by[row.Owner] = o
			}
			o.Records++
			if n := registry.Namespace(row.Resource); n != "" && !contains(o.Namespaces, n) {
				o.Namespaces = append(o.Namespaces, n)
			}
		}
		rows := make([]ownerRow, 0, len(by))
		for _, o := range by {
			sort.Strings(o.Namespaces)
			rows = append(rows, *o)
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].Owner < rows[j].Owner })
		return w.write(rows, []string{"OWNER", "RECORDS", "NAMESPACES"}, func(r ownerRow) []string {
			o := r.Owner
			if o == "" {
				o = "(none)"
			}
			return []string{o, fmt.Sprint(r.Records), dash(strings.Join(r.Namespaces, ","))}
		})
	case "changelog":
		id, _, err := needZone()
		if err != nil {
			return fail(err)
		}
		logs, err := p.ChangeLogs(ctx, id, *limit)
		if err != nil {
			return fail(err)
		}
		return w.write(logs, []string{"TIME", "ACTION", "OBJECT", "ENTITY", "CONTENT", "BY"}, func(l provider.ChangeLog) []string {
			return []string{l.Time.Format(time.RFC3339), l.Action, l.Object, l.Entity, l.Content, l.Creator}
		})
	case "diff":
		id, zoneName, err := needZone()
		if err != nil {
			return fail(err)
		}
		return diff(ctx, p, d, w, stderr, diffArgs{zoneID: id, zone: zoneName, kubeconfig: *kubeconfig, owner: *ownerID,
			tmpl: *tmpl, ttl: *ttl, sources: *src, namespace: *ns})
	}
	return fail(fmt.Errorf("unknown command %q (zones, records, diff, owners, changelog)", rest[0]))
}

type diffArgs struct {
	zoneID, zone, kubeconfig, owner, tmpl, sources, namespace string
	ttl                                                       int
}

type diffRow struct {
	Op       string `json:"op"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	Value    string `json:"value"`
	TTL      int    `json:"ttl"`
	WasTTL   int    `json:"wasTTL,omitempty"`
	Resource string `json:"resource,omitempty"`
	ID       int64  `json:"id,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

func diff(ctx context.Context, p API, d deps, w *writer, stderr io.Writer, a diffArgs) int {
	fail := func(err error) int { fmt.Fprintf(stderr, "pvtzctl: %v\n", err); return 2 }
	if err := registry.ValidateOwnerID(a.owner); err != nil {
		return fail(fmt.Errorf("--owner-id: %w", err))
	}
	cs, err := d.kube(a.kubeconfig)
	if err != nil {
		return fail(err)
	}
	src, err := source.New(source.Config{Client: cs, Services: strings.Contains(a.sources, "service"), Pods: strings.Contains(a.sources, "pod"),
		Namespace: a.namespace, Zone: a.zone, FQDNTemplate: a.tmpl, TTL: a.ttl, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return fail(err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer func() { stop(); src.Shutdown() }()
	if !src.Start(sctx) {
		return fail(errors.New("the API server's lists did not complete"))
	}
	recs, err := p.Records(ctx, a.zoneID, "")
	if err != nil {
		return fail(err)
	}
	res := plan.Calculate(plan.Input{OwnerID: a.owner, Policy: plan.Sync, Desired: src.Endpoints(), Current: recs, AllowDeletes: true})
	var rows []diffRow
	for _, c := range res.Changes {
		r := diffRow{Op: string(c.Op), Name: c.Record.Name, Type: c.Record.Type, Value: c.Record.Value, TTL: c.Record.TTL, Resource: c.Resource, ID: c.Record.ID}
		if c.Old != nil && c.Op == plan.Update {
			r.WasTTL = c.Old.TTL
		}
		rows = append(rows, r)
	}
	for _, c := range res.Conflicts {
		rows = append(rows, diffRow{Op: "conflict", Name: c.Name, Type: c.Type, Value: c.Value, Resource: c.Resource, Reason: c.Reason})
	}
	if code := w.write(rows, []string{"OP", "NAME", "TYPE", "VALUE", "TTL", "RESOURCE", "NOTE"}, func(r diffRow) []string {
		note := r.Reason
		if r.WasTTL != 0 {
			note = fmt.Sprintf("ttl %d -> %d", r.WasTTL, r.TTL)
		}
		return []string{r.Op, r.Name, r.Type, r.Value, fmt.Sprint(r.TTL), dash(r.Resource), dash(note)}
	}); code != 0 {
		return code
	}
	if len(rows) > 0 {
		return 1
	}
	return 0
}

type zoneRow struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Records int      `json:"records"`
	VPCs    []string `json:"vpcs"`
}

type recordRow struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Value    string `json:"value"`
	TTL      int    `json:"ttl"`
	Status   string `json:"status"`
	Owner    string `json:"owner,omitempty"`
	Resource string `json:"resource,omitempty"`
	Remark   string `json:"remark,omitempty"`
	ID       int64  `json:"id"`
}

type ownerRow struct {
	Owner      string   `json:"owner"`
	Records    int      `json:"records"`
	Namespaces []string `json:"namespaces"`
}

func toRow(r endpoint.Record) recordRow {
	row := recordRow{Name: r.Name, Type: r.Type, Value: r.Value, TTL: r.TTL, Status: r.Status, Remark: r.Remark, ID: r.ID}
	if o, res, ok := registry.Parse(r.Remark); ok {
		row.Owner, row.Resource = o, res
	}
	return row
}

func sortRows(rows []recordRow) {
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		return a.Value < b.Value
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

type writer struct {
	out    io.Writer
	format string
}

func (w *writer) write(v any, header []string, row any) int {
	switch w.format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return 2
		}
		fmt.Fprintln(w.out, string(b))
		return 0
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return 2
		}
		fmt.Fprint(w.out, string(b))
		return 0
	}
	tw := tabwriter.NewWriter(w.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	writeRows(tw, v, row)
	tw.Flush()
	return 0
}

func writeRows(tw io.Writer, v any, row any) {
	emit := func(cells []string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	switch rows := v.(type) {
	case []zoneRow:
		for _, r := range rows {
			emit(row.(func(zoneRow) []string)(r))
		}
	case []recordRow:
		for _, r := range rows {
			emit(row.(func(recordRow) []string)(r))
		}
	case []ownerRow:
		for _, r := range rows {
			emit(row.(func(ownerRow) []string)(r))
		}
	case []provider.ChangeLog:
		for _, r := range rows {
			emit(row.(func(provider.ChangeLog) []string)(r))
		}
	case []diffRow:
		for _, r := range rows {
			emit(row.(func(diffRow) []string)(r))
		}
	}
}
