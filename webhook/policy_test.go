package webhook

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
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
		*MakePolicy("everything").Obj(),
		*MakePolicy("team-a").Namespaces(map[string]string{"team": "a"}).Obj(),
		*MakePolicy("batch").Pods(map[string]string{"tier": "batch"}).Obj(),
		*MakePolicy("broken").Pods(map[string]string{"bad key!": "x"}).Obj(),
	}
	pod := MakePod("p", "ns").Label("tier", "batch").Obj()
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
	full := MakePolicy("full").Obj()
	full.Spec = klockv1alpha1.ClusterLockPolicySpec{
		Lease: "{name}", Container: "main", Wait: "30s", ConflictExitCode: ptr(int32(0)),
		LeaseDuration: "20s", RenewDeadline: "15s", RetryPeriod: "3s", Signal: "INT", KillAfter: "5s",
		CleanupLease: true, Labels: map[string]string{"b": "2", "a": "1"},
	}
	cases := []struct {
		name     string
		pod      *podWrapper
		policies []*klockv1alpha1.ClusterLockPolicy
		w        Workload
		want     map[string]string // annotations after; nil: unchanged
		applied  string
		warning  string
		err      string
	}{
		{
			name: "every option becomes an annotation", pod: MakePod("p", "ns"), policies: []*klockv1alpha1.ClusterLockPolicy{full}, w: cronJob, applied: "full",
			want: map[string]string{
				"klock.io/lease": "backup", "klock.io/container": "main", "klock.io/wait": "30s", "klock.io/conflict-exit-code": "0",
				"klock.io/lease-duration": "20s", "klock.io/renew-deadline": "15s", "klock.io/retry-period": "3s", "klock.io/signal": "INT",
				"klock.io/kill-after": "5s", "klock.io/cleanup-lease": "true", "klock.io/labels": "a=1,b=2", "klock.io/policy": "full",
			},
		},
		{
			name: "the pod's own annotations win", pod: MakePod("p", "ns").Lease("mine").Annotation(AnnotationWait, "1s"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "mine", "klock.io/wait": "1s", "klock.io/policy": "p"},
		},
		{
			name: "default lease is kind and name", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Obj()}, w: Workload{Kind: "Deployment", Name: "web"}, applied: "p",
			want: map[string]string{"klock.io/lease": "deployment-web", "klock.io/policy": "p"},
		},
		{
			name: "kinds not matching", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Kinds(klockv1alpha1.Job).Obj()}, w: cronJob,
		},
		{
			name: "kinds matching the top workload", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Kinds(klockv1alpha1.Deployment, klockv1alpha1.CronJob).Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/lease": "cronjob-backup", "klock.io/policy": "p"},
		},
		{
			name: "higher priority wins, with a warning", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("low").Lease("low").Obj(), MakePolicy("high").Lease("high").Priority(5).Obj()}, w: cronJob, applied: "high",
			want:    map[string]string{"klock.io/lease": "high", "klock.io/policy": "high"},
			warning: "ClusterLockPolicy low (priority 0) also selects this pod, and gives way to high (priority 5)",
		},
		{
			name: "a tie is denied, naming both", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("b").Obj(), MakePolicy("a").Obj(), MakePolicy("c").Priority(-1).Obj()}, w: cronJob,
			err: "ClusterLockPolicies a, b all select this pod with priority 0",
		},
		{
			name: "skip where allowed", pod: MakePod("p", "ns").Annotation(AnnotationSkip, "true"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").AllowSkip().Obj()}, w: cronJob,
		},
		{
			name: "skip where not allowed", pod: MakePod("p", "ns").Annotation(AnnotationSkip, "true"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Obj()}, w: cronJob,
			err: "ClusterLockPolicy p selects this pod and does not allow it to skip the lock",
		},
		{
			name: "skip false is no skip", pod: MakePod("p", "ns").Annotation(AnnotationSkip, "false"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Obj()}, w: cronJob, applied: "p",
			want: map[string]string{"klock.io/skip": "false", "klock.io/lease": "cronjob-backup", "klock.io/policy": "p"},
		},
		{
			name: "skip must be a boolean", pod: MakePod("p", "ns").Annotation(AnnotationSkip, "yes please"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").AllowSkip().Obj()}, w: cronJob,
			err: `metadata.annotations[klock.io/skip]: Invalid value: "yes please": must be "true" or "false"`,
		},
		{
			name: "a template that cannot render", pod: MakePod("p", "ns"),
			policies: []*klockv1alpha1.ClusterLockPolicy{MakePolicy("p").Lease("{label:app}").Obj()}, w: cronJob,
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

func TestPolicyWebhook(t *testing.T) {
	pods := admissionregistrationv1.MutatingWebhook{
		Name:              PodsWebhook,
		ClientConfig:      admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Name: "klock-webhook", Path: ptr(PodsPath)}},
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system"}}}},
		MatchConditions:   []admissionregistrationv1.MatchCondition{{Name: "annotated", Expression: "true"}},
	}
	p := MakePolicy("nightly").Namespaces(map[string]string{"team": "a"}).Pods(map[string]string{"tier": "batch"}).
		Kinds(klockv1alpha1.CronJob, klockv1alpha1.Job, klockv1alpha1.Deployment).AllowSkip().Obj()
	p.Generation = 3
	got := PolicyWebhook(&pods, p)
	want := admissionregistrationv1.MutatingWebhook{
		Name:         "nightly.policies.klock.io",
		ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Name: "klock-webhook", Path: ptr("/mutate-pods/policies/nightly/3")}},
		NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system"}},
			{Key: "team", Operator: metav1.LabelSelectorOpIn, Values: []string{"a"}},
		}},
		ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"batch"}},
		}},
		MatchConditions: []admissionregistrationv1.MatchCondition{
			{Name: "not-wrapped", Expression: "!(has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == 'klock-install') && " +
				"object.spec.containers.exists(c, has(c.command) && size(c.command) > 0 && c.command[0] == '/klock-bin/klock'))"},
			{Name: "not-skipped", Expression: "!has(object.metadata.annotations) || !('klock.io/skip' in object.metadata.annotations) || object.metadata.annotations['klock.io/skip'] != 'true'"},
			{Name: "workload-kinds", Expression: "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind in ['Job', 'ReplicaSet'])"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("policy webhook (-want +got):\n%s", diff)
	}
	if pods.Name != PodsWebhook || len(pods.MatchConditions) != 1 || *pods.ClientConfig.Service.Path != PodsPath {
		t.Fatal("the pods entry was changed")
	}
}

func TestAccessName(t *testing.T) {
	if got := accessName(Workload{Kind: "CronJob", Name: "backup"}); got != "klock-lease-cronjob-backup" {
		t.Errorf("accessName = %q", got)
	}
	long := accessName(Workload{Kind: "Deployment", Name: strings.Repeat("a", 253)})
	if len(long) != 253 || long == accessName(Workload{Kind: "Deployment", Name: strings.Repeat("a", 252)}) {
		t.Errorf("long names must be shortened to 253 and stay distinct: %q", long)
	}
}

func TestValidatePolicy(t *testing.T) {
	bad := MakePolicy("bad").Obj()
	bad.Spec.Selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Foo"}}}
	bad.Spec.Labels = map[string]string{"app.kubernetes.io/managed-by": "me"}
	err := ValidatePolicy(bad)
	if err == nil || !strings.Contains(err.Error(), "spec.selector.matchExpressions[0].operator") || !strings.Contains(err.Error(), "reserved for klock") {
		t.Errorf("err = %v", err)
	}
	if Candidates([]klockv1alpha1.ClusterLockPolicy{*bad}, MakePod("p", "ns").Obj(), nil) != nil {
		t.Error("an invalid policy is a candidate")
	}
	if err := ValidatePolicy(MakePolicy("good").Lease("{label:app}").Obj()); err != nil {
		t.Errorf("a valid policy: %v", err)
	}
}
