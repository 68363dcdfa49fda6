package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/wrap"
)

func TestRenderLease(t *testing.T) {
	cronJob := Workload{Kind: "CronJob", Name: "backup"}
	labels := map[string]string{"app": "Web_Front", "team": "a"}
	cases := []struct {
		template string
		w        Workload
		want     string
		err      string
	}{
		{template: "{kind}-{name}", w: cronJob, want: "cronjob-backup"},
		{template: "{namespace}.{name}", w: cronJob, want: "prod.backup"},
		{template: "lock-{label:app}", w: cronJob, want: "lock-web-front"},
		{template: "fixed", w: cronJob, want: "fixed"},
		{template: "{label:missing}", w: cronJob, err: "the pod has no label missing"},
		{template: "{name}", w: Workload{Kind: "Pod"}, err: "{name} is empty"},
		{template: "{nope}", w: cronJob, err: "unknown placeholder {nope}"},
		{template: "{name", w: cronJob, err: "unclosed {"},
		{template: "-{name}", w: cronJob, err: `renders as "-backup", which is not a Lease name`},
	}
	for _, tc := range cases {
		t.Run(tc.template, func(t *testing.T) {
			got, err := RenderLease(tc.template, "prod", tc.w, labels)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestCandidates(t *testing.T) {
	policies := []klockv1alpha1.ClusterLockPolicy{
		*builders.MakePolicy("everything").Obj(),
		*builders.MakePolicy("team-a").Namespaces(map[string]string{"team": "a"}).Obj(),
		*builders.MakePolicy("batch").Pods(map[string]string{"tier": "batch"}).Obj(),
		*builders.MakePolicy("broken").Pods(map[string]string{"bad key!": "x"}).Obj(),
	}
	pod := builders.MakePod("p", "ns").Label("tier", "batch").Obj()
	var got []string
	for _, p := range Candidates(policies, pod, map[string]string{"team": "b"}) {
		got = append(got, p.Name)
	}
	if want := []string{"everything", "batch"}; !cmp.Equal(got, want) {
		t.Fatalf("candidates = %v, want %v", got, want)
	}
}

func TestApplyPolicies(t *testing.T) {
	cronJob := Workload{Kind: "CronJob", Name: "backup"}
	full := builders.MakePolicy("full").Obj()
	full.Spec = klockv1alpha1.ClusterLockPolicySpec{
		Lease: "{name}", Container: "main", Wait: "30s", ConflictExitCode: ptr.To(int32(0)),
		LeaseDuration: "20s", RenewDeadline: "15s", RetryPeriod: "3s", Signal: "INT", KillAfter: "5s",
		CleanupLease: true, Labels: map[string]string{"b": "2", "a": "1"},
	}
	counting := func(name string, maxHolders int32, order string) *builders.PolicyBuilder {
		b := builders.MakePolicy(name)
		b.Spec.MaxHolders, b.Spec.Order = maxHolders, order
		return b
	}
	cases := []struct {
		name     string
		pod      *builders.PodBuilder
		policies []*klockv1alpha1.ClusterLockPolicy
		w        Workload
		want     map[string]string // annotations after; nil: unchanged
		applied  string
		warning  string
		err      string
	}{
		{
			name: "every option becomes an annotation", pod: builders.MakePod("p", "ns"), policies: []*klockv1alpha1.ClusterLockPolicy{full}, w: cronJob, applied: "full",
			want: map[string]string{
				"klock.io/lease": "backup", "klock.io/container": "main", "klock.io/wait": "30s", "klock.io/conflict-exit-code": "0",
				"klock.io/lease-duration": "20s", "klock.io/renew-deadline": "15s", "klock.io/retry-period": "3s", "klock.io/signal": "INT",
				"klock.io/kill-after": "5s", "klock.io/cleanup-lease": "true", "klock.io/labels": "a=1,b=2", "klock.io/policy": "full",
			},
		},
		{
			name: "the pod's own annotations win where it may skip", pod: builders.MakePod("p", "ns").Lease("mine").Annotation(wrap.AnnotationWait, "1s"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").AllowSkip().Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "mine", "klock.io/wait": "1s", "klock.io/policy": "p"},
		},
		{
			name: "where it may not skip, its own options still win", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationWait, "1s"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/wait": "1s", "klock.io/policy": "p"},
		},
		{
			name: "but not its own lease", pod: builders.MakePod("p", "ns").Lease("mine"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob,
			err: `metadata.annotations[klock.io/lease]: Forbidden: ClusterLockPolicy p selects this pod, does not allow it to skip the lock, and sets klock.io/lease to "cronjob-backup"`,
		},
		{
			name: "its own lease may say the same", pod: builders.MakePod("p", "ns").Lease("cronjob-backup"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/policy": "p"},
		},
		{
			name: "the policy wraps the first container", pod: builders.MakePod("p", "ns").Container("main", "busybox", "work").Container("side", "busybox", "sleep").
				Annotation(wrap.AnnotationDefaultContainer, "side"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/container": "main", "klock.io/policy": "p", wrap.AnnotationDefaultContainer: "side"},
		},
		{
			name: "not the container the pod names", pod: builders.MakePod("p", "ns").Container("main", "busybox", "work").Container("side", "busybox", "sleep").
				Annotation(wrap.AnnotationContainer, "side"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob,
			err: `metadata.annotations[klock.io/container]: Forbidden: ClusterLockPolicy p selects this pod, does not allow it to skip the lock, and sets klock.io/container to "main"`,
		},
		{
			name: "maxHolders and order become annotations", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{counting("p", 3, "any").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/max-holders": "3", "klock.io/order": "any", "klock.io/policy": "p"},
		},
		{
			name: "where it may not skip, its own order still wins", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationOrder, "fifo"),
			policies: []*klockv1alpha1.ClusterLockPolicy{counting("p", 3, "any").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/max-holders": "3", "klock.io/order": "fifo", "klock.io/policy": "p"},
		},
		{
			name: "but not its own count", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationMaxHolders, "5"),
			policies: []*klockv1alpha1.ClusterLockPolicy{counting("p", 3, "").Obj()}, w: cronJob,
			err: `metadata.annotations[klock.io/max-holders]: Forbidden: ClusterLockPolicy p selects this pod, does not allow it to skip the lock, and sets klock.io/max-holders to "3"`,
		},
		{
			name: "a policy without maxHolders is a mutex, which a pod may not make a counting lock", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationMaxHolders, "2"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob,
			err: `sets klock.io/max-holders to "1"`,
		},
		{
			name: "its own count may say the same", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationMaxHolders, "1"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/max-holders": "1", "klock.io/policy": "p"},
		},
		{
			name: "where it may skip, its own count wins", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationMaxHolders, "5"),
			policies: []*klockv1alpha1.ClusterLockPolicy{counting("p", 3, "").AllowSkip().Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/max-holders": "5", "klock.io/policy": "p"},
		},
		{
			name: "gate and startTimeout become annotations", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Gate(true).StartTimeout(90 * time.Second).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/gate": "true", "klock.io/start-timeout": "1m30s", "klock.io/policy": "p"},
		},
		{
			name: "gate false is said, so that --gating=default does not gate the pod", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Gate(false).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/gate": "false", "klock.io/policy": "p"},
		},
		{
			name: "gate unset leaves it to the webhook's --gating", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").StartTimeout(time.Hour).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/start-timeout": "1h0m0s", "klock.io/policy": "p"},
		},
		{
			name: "where it may not skip, its own gate and start timeout still win", pod: builders.MakePod("p", "ns").
				Annotation(wrap.AnnotationGate, "false").Annotation(wrap.AnnotationStartTimeout, "10m"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Gate(true).StartTimeout(time.Minute).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/gate": "false", "klock.io/start-timeout": "10m", "klock.io/policy": "p"},
		},
		{
			name: "default lease is kind and name", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: Workload{Kind: "Deployment", Name: "web"}, applied: "p",
			want: map[string]string{"klock.io/lease": "deployment-web", "klock.io/policy": "p"},
		},
		{
			name: "kinds not matching", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Kinds(klockv1alpha1.Job).Obj()}, w: cronJob,
		},
		{
			name: "kinds matching the top workload", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Kinds(klockv1alpha1.Deployment, klockv1alpha1.CronJob).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/policy": "p"},
		},
		{
			name: "higher priority wins, with a warning", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("low").Lease("low").Obj(), builders.MakePolicy("high").Lease("high").Priority(5).Obj()}, w: cronJob, applied: "high",
			want:    map[string]string{"klock.io/lease": "high", "klock.io/policy": "high"},
			warning: "ClusterLockPolicy low (priority 0) also selects this pod, and gives way to high (priority 5)",
		},
		{
			name: "a tie is denied, naming both", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("b").Obj(), builders.MakePolicy("a").Obj(), builders.MakePolicy("c").Priority(-1).Obj()}, w: cronJob,
			err: "ClusterLockPolicies a, b all select this pod with priority 0",
		},
		{
			name: "skip where allowed", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationSkip, "true"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").AllowSkip().Obj()}, w: cronJob,
		},
		{
			name: "skip where not allowed", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationSkip, "true"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob,
			err: "ClusterLockPolicy p selects this pod and does not allow it to skip the lock",
		},
		{
			name: "skip false is no skip", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationSkip, "false"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/skip": "false", "klock.io/lease": "cronjob-backup", "klock.io/policy": "p"},
		},
		{
			name: "skip must be a boolean", pod: builders.MakePod("p", "ns").Annotation(wrap.AnnotationSkip, "yes please"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").AllowSkip().Obj()}, w: cronJob,
			err: `metadata.annotations[klock.io/skip]: Invalid value: "yes please": must be "true" or "false"`,
		},
		{
			name: "a template that cannot render", pod: builders.MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Lease("{label:app}").Obj()}, w: cronJob,
			err: `ClusterLockPolicy p selects this pod, but its lease "{label:app}" cannot be named for it: the pod has no label app`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := tc.pod.Obj()
			before := pod.DeepCopy()
			applied, warnings, err := ApplyPolicies(pod, tc.policies, tc.w)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				if !cmp.Equal(pod, before) {
					t.Errorf("a denied pod was changed: %s", cmp.Diff(before, pod))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if name := ""; applied != nil {
				name = applied.Name
				if name != tc.applied {
					t.Errorf("applied %q, want %q", name, tc.applied)
				}
			} else if tc.applied != "" {
				t.Errorf("applied none, want %q", tc.applied)
			}
			want := before.Annotations
			if tc.want != nil {
				want = tc.want
			}
			if diff := cmp.Diff(want, pod.Annotations); diff != "" {
				t.Errorf("annotations (-want +got):\n%s", diff)
			}
			if got := strings.Join(warnings, "\n"); got != tc.warning {
				t.Errorf("warnings = %q, want %q", got, tc.warning)
			}
		})
	}
}

func TestValidatePolicy(t *testing.T) {
	bad := builders.MakePolicy("bad").Obj()
	bad.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Foo"}}}
	bad.Spec.Labels = map[string]string{"app.kubernetes.io/managed-by": "me"}
	err := ValidatePolicy(bad)
	if err == nil || !strings.Contains(err.Error(), "spec.selector.matchExpressions[0].operator") || !strings.Contains(err.Error(), "reserved for klock") {
		t.Errorf("err = %v", err)
	}
	if Candidates([]klockv1alpha1.ClusterLockPolicy{*bad}, builders.MakePod("p", "ns").Obj(), nil) != nil {
		t.Error("an invalid policy is a candidate")
	}
	if err := ValidatePolicy(builders.MakePolicy("good").Lease("{label:app}").Obj()); err != nil {
		t.Errorf("a valid policy: %v", err)
	}
}

// A start timeout the webhook would refuse on every pod makes the policy
// apply to nothing; the schema refuses it too, and this is the check
// behind it.
func TestValidatePolicyStartTimeout(t *testing.T) {
	for _, tc := range []struct {
		d   time.Duration
		err bool
	}{
		{d: time.Second},
		{d: 24 * time.Hour},
		{d: 0, err: true},
		{d: -time.Minute, err: true},
		{d: 24*time.Hour + time.Second, err: true},
	} {
		t.Run(tc.d.String(), func(t *testing.T) {
			err := ValidatePolicy(builders.MakePolicy("p").Gate(true).StartTimeout(tc.d).Obj())
			if !tc.err {
				if err != nil {
					t.Fatalf("a valid policy: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "spec.startTimeout: Invalid value: \""+tc.d.String()+"\": must be above 0 and at most 24h") {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// A policy whose options klock refuses together applies to nothing; the
// schema refuses a counting lock with cleanup too, and this is the check
// behind it for a policy stored before that rule.
func TestValidatePolicyCountingLock(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxHolders int32
		order      string
		cleanup    bool
		err        string
	}{
		{name: "a counting lock", maxHolders: 3},
		{name: "a counting lock whose waiters race", maxHolders: 100, order: "any"},
		{name: "a mutex with cleanup", maxHolders: 1, cleanup: true},
		{name: "a counting lock with cleanup", maxHolders: 3, cleanup: true,
			err: "klock does not accept the options: the klock.io/ annotations do not fit together: a counting lock (max holders 3) keeps its Leases"},
		{name: "more holders than klock allows", maxHolders: 101, err: `"101" is not a number of holders: give a whole number from 1 to 100`},
		{name: "an order klock does not know", order: "lifo", err: `"lifo" is not an order`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := builders.MakePolicy("p").Obj()
			p.Spec.MaxHolders, p.Spec.Order, p.Spec.CleanupLease = tc.maxHolders, tc.order, tc.cleanup
			err := ValidatePolicy(p)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("a valid policy: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one containing %q", err, tc.err)
			}
		})
	}
}
