package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/pflag"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/klock-io/klock/internal/version"
	"github.com/klock-io/klock/klock"
)

// PluginName is the name under which kubectl finds klock as a plugin:
// `kubectl klock status` runs `kubectl-klock status`.
const PluginName = "kubectl-klock"

// IsPlugin reports whether argv0, the name klock was run by, is the
// kubectl plugin's.
func IsPlugin(argv0 string) bool {
	return strings.TrimSuffix(filepath.Base(argv0), ".exe") == PluginName
}

// ExecutePlugin is Execute for klock run as kubectl-klock. Holding a lock
// while a command runs is no job for kubectl, so the plugin has status
// alone; given nothing, it prints the status help.
func ExecutePlugin(ctx context.Context, args []string, s Streams) error {
	const prog = "kubectl klock"
	if len(args) == 0 {
		return executeStatus(ctx, prog, []string{"--help"}, s)
	}
	switch args[0] {
	case "status":
		return executeStatus(ctx, prog, args[1:], s)
	case "-h", "--help", "help":
		return executeStatus(ctx, prog, []string{"--help"}, s)
	case "-V", "--version", "version":
		fmt.Fprintf(s.Out, "klock %s\n", version.Version)
		return nil
	}
	return &ExitError{Code: ExitFailure, Err: fmt.Errorf("unknown command %q for %s: the one command is status (see %s status --help); run klock itself to hold a lock", args[0], prog, prog)}
}

// statusOptions is what `klock status` is told.
type statusOptions struct {
	Namespace     string
	AllNamespaces bool
	Output        string // "" (a table), "json" or "yaml"
	Watch         bool
	Kubeconfig    string
	Context       string
	Help          bool
	// Name is the one lock to show; "" shows all.
	Name string
}

// The flags kubectl users pass on (-n, --context, --kubeconfig) keep
// kubectl's names, so that `kubectl klock status` takes them as kubectl does.
func (o *statusOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "Namespace of the locks. Default: the kubeconfig context's, else \"default\".")
	fs.BoolVarP(&o.AllNamespaces, "all-namespaces", "A", o.AllNamespaces, "Show the locks of every namespace.")
	fs.StringVarP(&o.Output, "output", "o", o.Output, "Print json or yaml instead of a table: {\"locks\": [...]}, a stable schema.")
	fs.BoolVarP(&o.Watch, "watch", "w", o.Watch, "After the table, print a line for every change until interrupted.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig. Default: $KUBECONFIG, else ~/.kube/config, else the pod's service account.")
	fs.StringVar(&o.Context, "context", o.Context, "The kubeconfig context to use. Default: its current context.")
	fs.BoolVarP(&o.Help, "help", "h", o.Help, "Print this help and exit.")
}

// parseStatus parses the arguments after `status`. prog is how the user
// called klock, for the messages.
func parseStatus(prog string, args []string) (*statusOptions, *pflag.FlagSet, error) {
	o := &statusOptions{}
	fs := pflag.NewFlagSet(prog+" status", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, and printed once by Exit
	fs.SortFlags = false
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fs, fmt.Errorf("%w (see %s status --help)", err, prog)
	}
	if o.Help {
		return o, fs, nil
	}
	switch names := fs.Args(); len(names) {
	case 0:
	case 1:
		o.Name = names[0]
	default:
		return nil, fs, fmt.Errorf("%s status takes one lock name at most, not %d: %s", prog, len(names), strings.Join(names, " "))
	}
	switch {
	case o.Output != "" && o.Output != "json" && o.Output != "yaml":
		return nil, fs, fmt.Errorf("-o %q is not an output format: give json or yaml, or no -o for a table", o.Output)
	case o.Watch && o.Output != "":
		return nil, fs, fmt.Errorf("-w prints changes as lines of text, and -o %s cannot describe them: give one of them", o.Output)
	case o.AllNamespaces && o.Namespace != "":
		return nil, fs, fmt.Errorf("-A and -n %s contradict each other: give one of them", o.Namespace)
	case o.AllNamespaces && o.Name != "":
		return nil, fs, fmt.Errorf("-A and the lock name %s contradict each other: a lock is in one namespace, give it with -n", o.Name)
	}
	if o.Name != "" {
		if errs := validation.IsDNS1123Subdomain(o.Name); len(errs) > 0 {
			return nil, fs, fmt.Errorf("invalid lock name %q: %s", o.Name, strings.Join(errs, "; "))
		}
	}
	return o, fs, nil
}

// kubeconfig loads the kubeconfig as kubectl does, with --context.
func (o *statusOptions) kubeconfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.Context})
}

// executeStatus runs `klock status` with the arguments after `status`.
func executeStatus(ctx context.Context, prog string, args []string, s Streams) error {
	o, fs, err := parseStatus(prog, args)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	if o.Help {
		fmt.Fprint(s.Out, statusUsage(prog, fs))
		return nil
	}
	setUpLogging(false, s)
	kubeconfig := o.kubeconfig()
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	// Unlike a lock, status does not look at $KLOCK_NAMESPACE or the pod's
	// namespace: it is run by people, where kubectl's rules are expected.
	ns := o.Namespace
	if !o.AllNamespaces && ns == "" {
		if ns, _, err = kubeconfig.Namespace(); err != nil || ns == "" {
			ns = "default"
		}
	}
	reader, err := klock.NewLeaseReader(rc)
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: err}
	}
	v := &statusView{reader: reader, namespace: ns, name: o.Name}
	if o.Watch {
		return v.watch(ctx, s)
	}
	locks, ref, err := v.read(ctx)
	if err != nil {
		return v.fail(err)
	}
	if len(locks) == 0 && o.Output == "" {
		fmt.Fprintln(s.Err, v.none())
		return nil
	}
	return printStatus(s.Out, o.Output, locks, ref, o.AllNamespaces)
}

// statusView reads the locks of one namespace ("" for all), or one lock.
type statusView struct {
	reader    *klock.LeaseReader
	namespace string
	name      string
}

// read reads the locks once. ref is the time to take ages from: the API
// server's, when it said.
func (v *statusView) read(ctx context.Context) (locks []klock.LockStatus, ref time.Time, err error) {
	list, date, err := v.reader.List(ctx, v.namespace, klock.KlockLeases)
	if err != nil {
		return nil, time.Time{}, err
	}
	now := time.Now()
	leases := slices.DeleteFunc(list.Items, func(l coordinationv1.Lease) bool { return !v.wants(&l) })
	// The first Lease of a lock may have been made by another program
	// (client-go's leader election) and lack klock's label: a lock asked
	// for by name is read by name too.
	if v.name != "" && !slices.ContainsFunc(leases, func(l coordinationv1.Lease) bool { return l.Name == v.name }) {
		l, _, err := v.reader.Get(ctx, v.namespace, v.name)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, time.Time{}, fmt.Errorf("cannot read lease %s/%s: %w", v.namespace, v.name, err)
		default:
			leases = append(leases, *l)
		}
	}
	ref = now
	if !date.IsZero() {
		ref = date
	}
	return v.locks(leases, date, now), ref, nil
}

// wants reports whether l is a Lease of the lock shown, or of any lock.
func (v *statusView) wants(l *coordinationv1.Lease) bool {
	return v.name == "" || l.Name == v.name || l.Annotations[klock.AnnotationLock] == v.name
}

// locks groups leases into locks. A lock asked for by name is shown even
// when it has no Lease: klock creates them on first use, and
// --cleanup-lease deletes them, so a lock without one is free.
func (v *statusView) locks(leases []coordinationv1.Lease, date, now time.Time) []klock.LockStatus {
	locks := klock.Locks(leases, date, now)
	fillTokens(locks, leases)
	if v.name != "" && len(locks) == 0 {
		locks = append(locks, klock.LockStatus{Namespace: v.namespace, Name: v.name, MaxHolders: 1, Holders: []klock.HolderStatus{}, Waiters: []klock.WaiterStatus{}})
	}
	return locks
}

// fillTokens supplies the fencing token of a holder that has not yet
// recorded it. A holder records its token with its first renewal, since
// the token is the resourceVersion of the write that acquired the Lease;
// until that renewal the Lease is still that write (its renewTime is its
// acquireTime), and its resourceVersion is the token.
func fillTokens(locks []klock.LockStatus, leases []coordinationv1.Lease) {
	byName := make(map[string]*coordinationv1.Lease, len(leases))
	for i := range leases {
		byName[leases[i].Namespace+"/"+leases[i].Name] = &leases[i]
	}
	for i := range locks {
		for j := range locks[i].Holders {
			h := &locks[i].Holders[j]
			l := byName[locks[i].Namespace+"/"+h.Lease]
			if h.FencingToken != 0 || l == nil || h.Since == nil || h.Renewed == nil || !h.Since.Equal(h.Renewed) {
				continue
			}
			if _, recorded := l.Annotations[klock.AnnotationFencingToken]; recorded {
				continue
			}
			h.FencingToken, _ = strconv.ParseUint(l.ResourceVersion, 10, 64)
		}
	}
}

// fail turns an API error into the one line klock ends with; a refusal
// says what to grant.
func (v *statusView) fail(err error) error {
	if apierrors.IsForbidden(err) {
		where := "in namespace " + v.namespace + ": grant them with a Role and RoleBinding there"
		if v.namespace == "" {
			where = "in every namespace (-A): grant them with a ClusterRole and ClusterRoleBinding"
		}
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("klock status needs get, list and watch on leases (API group coordination.k8s.io) %s: %w", where, err)}
	}
	return &ExitError{Code: ExitFailure, Err: err}
}

// none is what a table says when there is no lock to show.
func (v *statusView) none() string {
	if v.namespace == "" {
		return "No klock locks found in any namespace."
	}
	return "No klock locks found in namespace " + v.namespace + "."
}

// statusList is the document `klock status -o json|yaml` prints.
type statusList struct {
	Locks []klock.LockStatus `json:"locks"`
}

// printStatus prints locks as format says; ages are taken at ref.
func printStatus(w io.Writer, format string, locks []klock.LockStatus, ref time.Time, allNamespaces bool) error {
	if locks == nil {
		locks = []klock.LockStatus{}
	}
	var out []byte
	var err error
	switch format {
	case "json":
		out, err = json.MarshalIndent(statusList{Locks: locks}, "", "  ")
		out = append(out, '\n')
	case "yaml":
		out, err = yaml.Marshal(statusList{Locks: locks})
	default:
		return printTable(w, locks, ref, allNamespaces)
	}
	if err != nil {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("cannot print the locks as %s: %w", format, err)}
	}
	_, err = w.Write(out)
	return err
}

// printTable prints one row per holder and per waiter, in queue order, and
// one row for a lock that has neither, aligned as kubectl aligns its tables.
func printTable(w io.Writer, locks []klock.LockStatus, ref time.Time, allNamespaces bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := []string{"LOCK", "MAX", "ROLE", "IDENTITY", "SINCE", "RENEWED", "TOKEN", "STATE"}
	if allNamespaces {
		header = slices.Insert(header, 0, "NAMESPACE")
	}
	row := func(cells ...string) {
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	row(header...)
	for _, l := range locks {
		lock := []string{cell(l.Name), strconv.Itoa(l.MaxHolders)}
		if allNamespaces {
			lock = slices.Insert(lock, 0, l.Namespace)
		}
		if len(l.Holders) == 0 && len(l.Waiters) == 0 {
			row(append(lock, "free", "-", "-", "-", "-", "-")...)
		}
		for _, h := range l.Holders {
			renewed, token := "-", "-"
			if h.Renewed != nil {
				renewed = age(time.Duration(h.SilentSeconds*float64(time.Second))) + " ago"
			}
			if h.FencingToken != 0 {
				token = strconv.FormatUint(h.FencingToken, 10)
			}
			st := state(h.Abandoned)
			if h.Reserved && !h.Abandoned {
				st = "reserved" // for a pod the scheduler has just let through
			}
			row(append(lock, "holder", cell(h.Identity), since(ref, h.Since), renewed, token, st)...)
		}
		for i, wt := range l.Waiters {
			row(append(lock, fmt.Sprintf("waiting #%d", i+1), cell(wt.Identity), since(ref, &wt.Since), "-", "-", state(wt.Abandoned))...)
		}
	}
	return tw.Flush()
}

// cell makes s one table cell: "-" for nothing, and quoted if it holds a
// tab or newline, which would break the columns.
func cell(s string) string {
	switch {
	case s == "":
		return "-"
	case strings.ContainsFunc(s, unicode.IsControl):
		return strconv.Quote(s)
	}
	return s
}

func since(ref time.Time, t *metav1.MicroTime) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	// t is by the holder's or waiter's clock; one ahead of ref's shows 0s.
	return age(ref.Sub(t.Time))
}

// age prints d as kubectl prints ages: 45s, 3m12s, 5h.
func age(d time.Duration) string {
	return duration.HumanDuration(max(d, 0))
}

func state(abandoned bool) string {
	if abandoned {
		return "abandoned"
	}
	return "live"
}

// changeKind is a kind of change `klock status -w` reports, in the order
// it reports those of one lock that happen at once.
type changeKind int

const (
	changeExpired changeKind = iota
	changeReleased
	changeAcquired
	changeLeft
	changeQueued
	changeWaiterExpired
)

// statusChange is one line of `klock status -w`.
type statusChange struct {
	Namespace, Lock string
	Kind            changeKind
	Identity        string
	Token           uint64 // changeAcquired; 0 if unknown
	Position        int    // changeQueued, changeWaiterExpired: 1 is the first in line
}

func (c statusChange) String() string {
	id := cell(c.Identity)
	var what string
	switch c.Kind {
	case changeExpired:
		what = "expired: " + id + " abandoned"
	case changeReleased:
		what = "released by " + id
	case changeAcquired:
		what = "acquired by " + id
		if c.Token != 0 {
			what += fmt.Sprintf(" (token %d)", c.Token)
		}
	case changeLeft:
		what = id + " left the queue"
	case changeQueued:
		what = fmt.Sprintf("%s queued (position %d)", id, c.Position)
	case changeWaiterExpired:
		what = fmt.Sprintf("expired: %s abandoned its place in the queue (position %d)", id, c.Position)
	}
	return c.Namespace + "/" + c.Lock + " " + what
}

// statusChanges lists what changed from one reading of the locks to the
// next.
func statusChanges(prev, cur []klock.LockStatus) []statusChange {
	key := func(l klock.LockStatus) string { return l.Namespace + "/" + l.Name }
	before := make(map[string]klock.LockStatus, len(prev))
	for _, l := range prev {
		before[key(l)] = l
	}
	var out []statusChange
	for _, l := range cur {
		out = append(out, lockChanges(before[key(l)], l)...)
		delete(before, key(l))
	}
	// Locks whose Leases are all gone (deleted by --cleanup-lease).
	for _, k := range slices.Sorted(maps.Keys(before)) {
		p := before[k]
		out = append(out, lockChanges(p, klock.LockStatus{Namespace: p.Namespace, Name: p.Name})...)
	}
	return out
}

// lockChanges lists what changed in one lock from p to c.
func lockChanges(p, c klock.LockStatus) []statusChange {
	var out []statusChange
	add := func(kind changeKind, id string, token uint64, pos int) {
		out = append(out, statusChange{Namespace: c.Namespace, Lock: c.Name, Kind: kind, Identity: id, Token: token, Position: pos})
	}
	holder := func(hs []klock.HolderStatus, h klock.HolderStatus) (klock.HolderStatus, bool) {
		i := slices.IndexFunc(hs, func(o klock.HolderStatus) bool { return sameAcquisition(o, h) })
		if i < 0 {
			return klock.HolderStatus{}, false
		}
		return hs[i], true
	}
	for _, h := range p.Holders {
		if _, ok := holder(c.Holders, h); ok || h.Abandoned {
			// Still held, or already reported when it went silent.
			continue
		}
		// A release empties the slot (or deletes it); a slot that went
		// from one acquisition straight to another was taken over.
		takenOver := slices.ContainsFunc(c.Holders, func(o klock.HolderStatus) bool { return o.Lease == h.Lease })
		if takenOver {
			add(changeExpired, h.Identity, 0, 0)
		} else {
			add(changeReleased, h.Identity, 0, 0)
		}
	}
	for _, h := range c.Holders {
		was, ok := holder(p.Holders, h)
		switch {
		case !ok:
			add(changeAcquired, h.Identity, h.FencingToken, 0)
		case h.Abandoned && !was.Abandoned:
			add(changeExpired, h.Identity, 0, 0)
		}
	}
	waiter := func(ws []klock.WaiterStatus, id string) (klock.WaiterStatus, bool) {
		i := slices.IndexFunc(ws, func(w klock.WaiterStatus) bool { return w.Identity == id })
		if i < 0 {
			return klock.WaiterStatus{}, false
		}
		return ws[i], true
	}
	for _, w := range p.Waiters {
		if _, ok := waiter(c.Waiters, w.Identity); !ok {
			add(changeLeft, w.Identity, 0, 0)
		}
	}
	for i, w := range c.Waiters {
		if was, ok := waiter(p.Waiters, w.Identity); !ok {
			add(changeQueued, w.Identity, 0, i+1)
		} else if w.Abandoned && !was.Abandoned {
			add(changeWaiterExpired, w.Identity, 0, i+1)
		}
	}
	slices.SortStableFunc(out, func(a, b statusChange) int { return int(a.Kind) - int(b.Kind) })
	return out
}

// sameAcquisition reports whether a and b are one holder's one
// acquisition: a holder that takes a lock again, even under the same
// identity, has another acquire time.
func sameAcquisition(a, b klock.HolderStatus) bool {
	if a.Identity != b.Identity || a.Lease != b.Lease || (a.Since == nil) != (b.Since == nil) {
		return false
	}
	return a.Since == nil || a.Since.Equal(b.Since)
}

// statusWatch follows the Leases of a statusView, for `klock status -w`.
type statusWatch struct {
	v        *statusView
	selector labels.Selector
	// leases are the Leases of the locks shown, by namespace/name.
	leases map[string]coordinationv1.Lease
	// rv is the resourceVersion to watch from.
	rv string
	// offset is how far the API server's clock is ahead of ours, as its
	// Date said at the last list; known tells whether it said.
	offset time.Duration
	known  bool
	// beats are the waiters' places as last seen, for judging each
	// waiter by its own renewals.
	beats map[waiterKey]beatSeen
}

type waiterKey struct{ namespace, lock, id string }

type beatSeen struct {
	beat int64
	at   time.Time // by this process's clock
	ttl  time.Duration
}

// watch prints the locks, then a line for every change, until ctx ends or
// klock gets INT or TERM.
func (v *statusView) watch(ctx context.Context, s Streams) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	w := &statusWatch{v: v, selector: klock.KlockLeases, beats: map[waiterKey]beatSeen{}}
	if v.name != "" {
		// The lock's first Lease may lack klock's label, and may appear
		// later: watch the namespace's Leases, and keep the lock's.
		w.selector = labels.Everything()
	}
	if err := w.relist(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return v.fail(err)
	}
	prev := w.snapshot(time.Now())
	if len(prev) == 0 {
		fmt.Fprintln(s.Err, v.none())
	} else if err := printTable(s.Out, prev, time.Now().Add(w.offset), v.namespace == ""); err != nil {
		return err
	}
	emit := func() {
		cur := w.snapshot(time.Now())
		for _, c := range statusChanges(prev, cur) {
			fmt.Fprintf(s.Out, "%s %s\n", time.Now().Format(time.RFC3339), c)
		}
		prev = cur
	}

	// Abandonment comes with time, not with a write: look every second.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var stream watch.Interface
	defer func() {
		if stream != nil {
			stream.Stop()
		}
	}()
	retry := func(err error, backoff *time.Duration) {
		fmt.Fprintf(s.Err, "klock: %v; retrying in %s\n", err, *backoff)
		select {
		case <-ctx.Done():
		case <-time.After(*backoff):
		}
		*backoff = min(*backoff*2, 30*time.Second)
	}
	backoff, relist := time.Second, false
	var opened time.Time
	for ctx.Err() == nil {
		if relist {
			if err := w.relist(ctx); err != nil {
				if ctx.Err() != nil {
					break
				}
				if apierrors.IsForbidden(err) {
					return v.fail(err)
				}
				retry(err, &backoff)
				continue
			}
			relist, backoff = false, time.Second
			emit()
		}
		if stream == nil {
			var err error
			stream, err = v.reader.Watch(ctx, v.namespace, w.selector, w.rv)
			if err != nil {
				stream = nil
				if ctx.Err() != nil {
					break
				}
				if apierrors.IsForbidden(err) {
					return v.fail(err)
				}
				retry(fmt.Errorf("cannot watch leases: %w", err), &backoff)
				relist = true
				continue
			}
			opened = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
			emit()
		case ev, ok := <-stream.ResultChan():
			if !ok {
				// The API server ends watches now and then; go on from
				// the last version seen, pausing if it ends them at once.
				stream.Stop()
				stream = nil
				if time.Since(opened) < time.Second {
					retry(errors.New("the watch of leases ended at once"), &backoff)
				}
				continue
			}
			if ev.Type == watch.Error {
				// 410 Gone, most often: the version is too old to watch
				// from. Read everything again; anything else may recur,
				// so not at once.
				stream.Stop()
				stream = nil
				relist = true
				if err := apierrors.FromObject(ev.Object); !apierrors.IsResourceExpired(err) && !apierrors.IsGone(err) {
					retry(fmt.Errorf("watching leases: %w", err), &backoff)
				}
				continue
			}
			backoff = time.Second
			w.apply(ev)
			emit()
		}
	}
	return nil
}

// relist reads the Leases again, and the API server's clock with them.
func (w *statusWatch) relist(ctx context.Context) error {
	list, date, err := w.v.reader.List(ctx, w.v.namespace, w.selector)
	if err != nil {
		return err
	}
	now := time.Now()
	w.leases = make(map[string]coordinationv1.Lease, len(list.Items))
	for _, l := range list.Items {
		if w.v.wants(&l) {
			w.leases[l.Namespace+"/"+l.Name] = l
		}
	}
	w.rv = list.ResourceVersion
	if !date.IsZero() {
		w.offset, w.known = date.Sub(now), true
	}
	return nil
}

// apply folds a watch event into the Leases.
func (w *statusWatch) apply(ev watch.Event) {
	l, ok := ev.Object.(*coordinationv1.Lease)
	if !ok {
		return
	}
	w.rv = l.ResourceVersion
	key := l.Namespace + "/" + l.Name
	switch {
	case ev.Type == watch.Bookmark:
	case ev.Type == watch.Deleted || !w.v.wants(l):
		delete(w.leases, key)
	default:
		w.leases[key] = *l
	}
}

// snapshot is the locks as of now. Holders are judged on the API server's
// clock as estimated at the last list, since no watch event carries a
// Date; waiters on their own renewals as this process saw them.
func (w *statusWatch) snapshot(now time.Time) []klock.LockStatus {
	leases := slices.Collect(maps.Values(w.leases))
	var date time.Time
	ref := now
	if w.known {
		ref = now.Add(w.offset)
		date = ref
	}
	locks := w.v.locks(leases, date, ref)

	seen := make(map[waiterKey]beatSeen, len(w.beats))
	for i := range leases {
		l := &leases[i]
		lock, ok := l.Annotations[klock.AnnotationLock]
		if !ok || l.Name != klock.QueueName(lock) {
			continue
		}
		entries, err := klock.ParseQueue(l)
		if err != nil {
			continue
		}
		for _, e := range entries {
			k := waiterKey{l.Namespace, lock, e.ID}
			b, ok := w.beats[k]
			if !ok || b.beat != e.Beat {
				b = beatSeen{beat: e.Beat, at: now}
			}
			b.ttl = time.Duration(e.TTLSeconds) * time.Second
			seen[k] = b
		}
	}
	w.beats = seen
	for i := range locks {
		for j := range locks[i].Waiters {
			wt := &locks[i].Waiters[j]
			if b, ok := seen[waiterKey{locks[i].Namespace, locks[i].Name, wt.Identity}]; ok && b.ttl > 0 && now.Sub(b.at) >= b.ttl {
				wt.Abandoned = true
			}
		}
	}
	return locks
}

func statusUsage(prog string, fs *pflag.FlagSet) string {
	return fmt.Sprintf(`%[1]s status shows who holds the klock locks of a namespace, and who waits.

Usage:
  %[1]s status [flags] [LOCK]

Without LOCK it shows the locks klock made (their Leases are labelled
app.kubernetes.io/managed-by=klock); with LOCK that lock, even one whose
Lease another program made, such as client-go's leader election. The table
has a row per holder and per waiter, in queue order, and a row "free" for a
lock that has neither:

  LOCK    MAX  ROLE        IDENTITY  SINCE  RENEWED  TOKEN  STATE
  backup  2    holder      web-7f9c  3m12s  1s ago   48213  live
  backup  2    holder      web-2b4d  4m     18s ago  48290  abandoned
  backup  2    waiting #1  web-8d2e  2m5s   -        -      live
  render  1    free        -         -      -        -      -

MAX is how many may hold the lock at once (--max-holders). SINCE is how long
a holder has held it, or a waiter waited. RENEWED is when a holder last
renewed, TOKEN the fencing token of its acquisition. abandoned: silent for
its whole lease duration (a holder) or queue TTL (a waiter), it looks dead,
and others may take its place.

-o json prints {"locks": [...]}, a schema that stays stable; -o yaml the same
in YAML. -w prints the table, then a line for every change until interrupted:

  2026-01-05T10:04:01Z team-a/backup acquired by web-8d2e (token 48302)
  2026-01-05T10:04:01Z team-a/backup web-8d2e left the queue
  2026-01-05T10:04:07Z team-a/backup web-1a1a queued (position 1)
  2026-01-05T10:05:30Z team-a/backup released by web-8d2e
  2026-01-05T10:05:44Z team-a/backup expired: web-7f9c abandoned

Examples:
  %[1]s status
  %[1]s status -n prod nightly-backup -o json
  %[1]s status -A -w

Namespace: -n, else the kubeconfig context's, else "default"; -A for all.

As a kubectl plugin: put this binary on the PATH as kubectl-klock, and
kubectl klock status works, taking -n, --context and --kubeconfig.

Exit status: 0, or 125 when it failed (bad flags, no cluster, no
permission), with one line on stderr that says why.

Permissions: get, list and watch on leases, in the namespace (a Role), or in
every namespace for -A (a ClusterRole):

  rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "list", "watch"]

Flags:
%[2]s`, prog, fs.FlagUsages())
}
