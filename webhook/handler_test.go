package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatchv5 "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/internal/builders"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/wrap"
)

var testOptions = wrap.Options{Image: "ghcr.io/klock-io/klock:v1", ImagePullPolicy: corev1.PullIfNotPresent}

func podRequest(op admissionv1.Operation, raw []byte) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Operation: op, Namespace: "ns",
		Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Object: runtime.RawExtension{Raw: raw},
	}}
}

func rawPod(t testing.TB, p *corev1.Pod) []byte {
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPodHandler(t *testing.T) {
	h := NewPodHandler(Scheme(), testOptions, nil, nil)
	for _, tc := range []struct {
		name     string
		req      admission.Request
		allowed  bool
		code     int32
		patched  bool
		outcome  string
		contains string
		off      bool // --gating=off
	}{
		{name: "undecodable", req: podRequest(admissionv1.Create, []byte("{not json")), code: http.StatusBadRequest, outcome: outcomeError},
		{name: "not annotated", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").Container("app", "busybox", "true").Obj())), allowed: true, outcome: outcomeSkipped},
		{name: "annotated", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").Lease("x").Container("app", "busybox", "true").Obj())), allowed: true, patched: true, outcome: outcomeWrapped},
		{name: "bad annotation", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").Lease("x").Annotation(wrap.AnnotationWait, "soon").Container("app", "busybox", "true").Obj())),
			code: http.StatusForbidden, outcome: outcomeDenied, contains: "klock.io/wait"},
		{name: "a pod of another namespace than the request's", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "victim").Lease("x").Container("app", "busybox", "true").Obj())),
			code: http.StatusBadRequest, outcome: outcomeError, contains: "namespace"},
		{name: "not a create", req: podRequest(admissionv1.Update, rawPod(t, builders.MakePod("p", "").Lease("x").Container("app", "busybox", "true").Obj())), allowed: true, outcome: outcomeSkipped},
		{name: "klock's scheduling gate on a pod klock does not wrap", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").SchedulingGate(wrap.SchedulingGate).Container("app", "busybox", "true").Obj())),
			code: http.StatusForbidden, outcome: outcomeDenied, contains: "the scheduling gate klock.io/lock is klock's, and only a pod klock wraps (annotated klock.io/lease) is ever let through it: remove the gate"},
		{name: "gating is off, and the pod asks for it", req: podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").Lease("x").Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "true").Obj())),
			code: http.StatusForbidden, outcome: outcomeDenied, contains: "gating is off in this cluster", off: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h
			if tc.off {
				opts := testOptions
				opts.Gating = wrap.GatingOff
				h = NewPodHandler(Scheme(), opts, nil, nil)
			}
			before := testutil.ToFloat64(admissions.WithLabelValues("Pod", tc.outcome))
			resp := h.Handle(context.Background(), tc.req)
			if resp.Allowed != tc.allowed || (len(resp.Patches) > 0) != tc.patched {
				t.Errorf("allowed %v with %d patches, want %v, patched %v (%+v)", resp.Allowed, len(resp.Patches), tc.allowed, tc.patched, resp.Result)
			}
			if tc.code != 0 && (resp.Result == nil || resp.Result.Code != tc.code) {
				t.Errorf("result %+v, want code %d", resp.Result, tc.code)
			}
			if tc.contains != "" && (resp.Result == nil || !strings.Contains(resp.Result.Message, tc.contains)) {
				t.Errorf("result %+v, want a message containing %q", resp.Result, tc.contains)
			}
			if got := testutil.ToFloat64(admissions.WithLabelValues("Pod", tc.outcome)) - before; got != 1 {
				t.Errorf("the %q admissions counter grew by %v, want 1", tc.outcome, got)
			}
		})
	}
}

// FuzzPodHandler: whatever bytes arrive as the object, the handler answers
// and does not panic.
func FuzzPodHandler(f *testing.F) {
	f.Add(rawPod(f, builders.MakePod("p", "").Lease("x").Container("app", "busybox", "true").Obj()))
	f.Add(rawPod(f, builders.MakePod("p", "").Lease("x").Annotation(wrap.AnnotationContainer, "nope").Obj()))
	f.Add([]byte(`{"metadata":{"annotations":{"klock.io/lease":"x"}},"spec":{"containers":[{"name":"a","args":["b"]}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"klock.io/lease":null}}}`))
	f.Add([]byte(`[]`))
	h := NewPodHandler(Scheme(), testOptions, nil, nil)
	f.Fuzz(func(t *testing.T, raw []byte) {
		resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw))
		if !resp.Allowed && resp.Result == nil {
			t.Fatal("a refusal without a reason")
		}
	})
}

// policySource is a PolicySource with fixed answers.
type policySource struct {
	policies []*klockv1alpha1.ClusterLockPolicy
	err      error
	workload policy.Workload
}

func (s policySource) Candidates(context.Context, *corev1.Pod) ([]*klockv1alpha1.ClusterLockPolicy, error) {
	return s.policies, s.err
}

func (s policySource) Workload(context.Context, *corev1.Pod) (policy.Workload, error) {
	return s.workload, nil
}

func (s policySource) Current(_ context.Context, name string, generation int64) error {
	for _, p := range s.policies {
		if p.Name == name && p.Generation >= generation {
			return nil
		}
	}
	return errors.New("not known")
}

func TestPodHandlerPolicies(t *testing.T) {
	plain := podRequest(admissionv1.Create, rawPod(t, builders.MakePod("p", "").Container("app", "busybox", "true").Obj()))
	cronJob := policy.Workload{Kind: "CronJob", Name: "nightly"}

	t.Run("a selected pod is wrapped, its annotations in the patch", func(t *testing.T) {
		h := NewPodHandler(Scheme(), testOptions, nil, nil).WithPolicies(policySource{policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("p").Obj()}, workload: cronJob})
		resp := h.Handle(context.Background(), plain)
		if !resp.Allowed {
			t.Fatalf("denied: %+v", resp.Result)
		}
		var added map[string]any
		for _, op := range resp.Patches {
			if op.Operation == "add" && op.Path == "/metadata/annotations" {
				added, _ = op.Value.(map[string]any)
			}
		}
		if added["klock.io/lease"] != "cronjob-nightly" || added["klock.io/policy"] != "p" {
			t.Errorf("patch %+v lacks the lease and policy annotations", resp.Patches)
		}
	})

	t.Run("policies that cannot be read fail the admission", func(t *testing.T) {
		h := NewPodHandler(Scheme(), testOptions, nil, nil).WithPolicies(policySource{err: errors.New("cache not synced")})
		if resp := h.Handle(context.Background(), plain); resp.Allowed || resp.Result.Code != http.StatusInternalServerError {
			t.Errorf("allowed %v, result %+v: a pod a policy may select must not pass unwrapped", resp.Allowed, resp.Result)
		}
	})

	t.Run("a call for a policy this replica does not know yet fails", func(t *testing.T) {
		p := builders.MakePolicy("p").Obj()
		p.Generation = 2
		h := NewPodHandler(Scheme(), testOptions, nil, nil).WithPolicies(policySource{policies: []*klockv1alpha1.ClusterLockPolicy{p}, workload: cronJob})
		serve := RequirePolicyFromPath(&admission.Webhook{Handler: h})
		for path, wantAllowed := range map[string]bool{PolicyPath("p", 2): true, PolicyPath("p", 3): false, PolicyPath("other", 1): false} {
			body, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: &plain.AdmissionRequest})
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			serve.ServeHTTP(rec, req)
			var review admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil || review.Response == nil {
				t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
			}
			if review.Response.Allowed != wantAllowed {
				t.Errorf("%s: allowed %v, want %v (%+v)", path, review.Response.Allowed, wantAllowed, review.Response.Result)
			}
		}
	})

	t.Run("a policy's gate gates the pod, unless gating is off", func(t *testing.T) {
		source := policySource{policies: []*klockv1alpha1.ClusterLockPolicy{builders.MakePolicy("gated").Gate(true).Obj()}, workload: cronJob}
		resp := NewPodHandler(Scheme(), testOptions, nil, nil).WithPolicies(source).Handle(context.Background(), plain)
		if !resp.Allowed {
			t.Fatalf("denied: %+v", resp.Result)
		}
		var pod corev1.Pod
		if err := json.Unmarshal(apply(t, plain.Object.Raw, resp), &pod); err != nil {
			t.Fatal(err)
		}
		if !wrap.Gated(&pod) || pod.Labels[wrap.LabelGated] != "true" || pod.Annotations[wrap.AnnotationGate] != "true" {
			t.Errorf("not gated: gates %v, labels %v, annotations %v", pod.Spec.SchedulingGates, pod.Labels, pod.Annotations)
		}

		off := testOptions
		off.Gating = wrap.GatingOff
		resp = NewPodHandler(Scheme(), off, nil, nil).WithPolicies(source).Handle(context.Background(), plain)
		if resp.Allowed || !strings.Contains(resp.Result.Message, "wrapping the pod for ClusterLockPolicy gated") ||
			!strings.Contains(resp.Result.Message, "spec.gate of the ClusterLockPolicy that sets it") {
			t.Errorf("gating off: allowed %v, result %+v", resp.Allowed, resp.Result)
		}
	})

	t.Run("a denial for a policy's values names the policy", func(t *testing.T) {
		p := builders.MakePolicy("strict").Obj()
		p.Spec.Container = "missing"
		h := NewPodHandler(Scheme(), testOptions, nil, nil).WithPolicies(policySource{policies: []*klockv1alpha1.ClusterLockPolicy{p}, workload: cronJob})
		resp := h.Handle(context.Background(), plain)
		if resp.Allowed || !strings.Contains(resp.Result.Message, "wrapping the pod for ClusterLockPolicy strict") || !strings.Contains(resp.Result.Message, "missing") {
			t.Errorf("allowed %v, result %+v", resp.Allowed, resp.Result)
		}
	})
}

// apply applies resp's patch to raw, as the API server does.
func apply(t *testing.T, raw []byte, resp admission.Response) []byte {
	t.Helper()
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatchv5.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("applying %s: %v", ops, err)
	}
	return out
}

// Fields that this webhook's Go types do not know (the API server's may be
// newer) stay where the user put them: the installer is added in front of
// the user's init containers, not written over the first of them.
func TestPodPatchKeepsUnknownFields(t *testing.T) {
	raw := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"klock.io/lease":"x"}},
		"spec":{"futureSpecField":"s",
			"initContainers":[{"name":"migrate","image":"tool","futureField":{"a":1}},{"name":"mesh","image":"proxy","futureField":{"b":2}}],
			"containers":[{"name":"app","image":"busybox","command":["work"],"futureField":{"c":3}}]}}`)
	h := NewPodHandler(Scheme(), testOptions, nil, nil)
	resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw))
	if !resp.Allowed {
		t.Fatalf("denied: %+v", resp.Result)
	}
	var got struct {
		Spec struct {
			FutureSpecField string `json:"futureSpecField"`
			InitContainers  []struct {
				Name        string         `json:"name"`
				FutureField map[string]int `json:"futureField"`
			} `json:"initContainers"`
			Containers []struct {
				Command     []string       `json:"command"`
				FutureField map[string]int `json:"futureField"`
			} `json:"containers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(apply(t, raw, resp), &got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	if len(s.InitContainers) != 3 || s.InitContainers[0].Name != wrap.InitContainerName || s.InitContainers[0].FutureField != nil ||
		s.InitContainers[1].Name != "migrate" || s.InitContainers[1].FutureField["a"] != 1 ||
		s.InitContainers[2].Name != "mesh" || s.InitContainers[2].FutureField["b"] != 2 {
		t.Errorf("init containers after the patch: %+v", s.InitContainers)
	}
	if s.FutureSpecField != "s" || s.Containers[0].FutureField["c"] != 3 || s.Containers[0].Command[0] != wrap.BinaryPath {
		t.Errorf("spec after the patch: %+v", s)
	}

	// A pod without init containers gets the list.
	raw = rawPod(t, builders.MakePod("p", "").Lease("x").Container("app", "busybox", "true").Obj())
	var pod corev1.Pod
	if err := json.Unmarshal(apply(t, raw, h.Handle(context.Background(), podRequest(admissionv1.Create, raw))), &pod); err != nil {
		t.Fatal(err)
	}
	if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != wrap.InitContainerName {
		t.Errorf("init containers %+v", pod.Spec.InitContainers)
	}
}

// The patch gates a pod as wrap.Mutate does: klock's scheduling gate
// after the pod's own, whose fields the webhook's types may not know, and
// the label, beside the pod's own; called again, it changes nothing.
func TestPodPatchGates(t *testing.T) {
	opts := testOptions
	opts.Gating = wrap.GatingDefault
	h := NewPodHandler(Scheme(), opts, nil, nil)
	for _, tc := range []struct {
		name  string
		raw   string
		gates []any
		label map[string]any
	}{
		{name: "a pod with neither gates nor labels",
			raw:   `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"klock.io/lease":"x"}},"spec":{"containers":[{"name":"app","image":"busybox","command":["work"]}]}}`,
			gates: []any{map[string]any{"name": "klock.io/lock"}},
			label: map[string]any{"klock.io/gated": "true"}},
		{name: "a pod with gates and labels of its own",
			raw: `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"app":"web"},"annotations":{"klock.io/lease":"x"}},
				"spec":{"schedulingGates":[{"name":"example.com/quota","futureField":1}],"containers":[{"name":"app","image":"busybox","command":["work"]}]}}`,
			gates: []any{map[string]any{"name": "example.com/quota", "futureField": float64(1)}, map[string]any{"name": "klock.io/lock"}},
			label: map[string]any{"app": "web", "klock.io/gated": "true"}},
		{name: "a pod with klock's gate already",
			raw:   `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"klock.io/lease":"x"}},"spec":{"schedulingGates":[{"name":"klock.io/lock"}],"containers":[{"name":"app","image":"busybox","command":["work"]}]}}`,
			gates: []any{map[string]any{"name": "klock.io/lock"}},
			label: map[string]any{"klock.io/gated": "true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.raw)
			resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw))
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			raw = apply(t, raw, resp)
			var got struct {
				Metadata struct {
					Labels map[string]any `json:"labels"`
				} `json:"metadata"`
				Spec struct {
					SchedulingGates []any `json:"schedulingGates"`
					Containers      []struct {
						Command []string `json:"command"`
					} `json:"containers"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.gates, got.Spec.SchedulingGates); diff != "" {
				t.Errorf("schedulingGates (-want,+got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.label, got.Metadata.Labels); diff != "" {
				t.Errorf("labels (-want,+got):\n%s", diff)
			}
			if want := []string{wrap.BinaryPath, "--lease=x", "--", "work"}; !cmp.Equal(want, got.Spec.Containers[0].Command) {
				t.Errorf("command %q, want %q", got.Spec.Containers[0].Command, want)
			}
			if resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw)); !resp.Allowed || len(resp.Patches) > 0 {
				t.Errorf("called again: allowed %v, patches %v", resp.Allowed, resp.Patches)
			}
		})
	}
}

// The handler gates by the request's namespace (the pod carries none on
// create): outside --gating-namespaces, a pod that asks to be gated is
// denied, and gating default leaves the others ungated.
func TestPodHandlerGatingNamespaces(t *testing.T) {
	asks := builders.MakePod("p", "").Lease("x").Annotation(wrap.AnnotationGate, "true").Container("app", "busybox", "true").Obj()
	silent := builders.MakePod("p", "").Lease("x").Container("app", "busybox", "true").Obj()
	for _, tc := range []struct {
		name       string
		gating     wrap.Gating
		namespaces []string // the request's is ns
		pod        *corev1.Pod
		gated      bool
		denied     string
	}{
		{name: "opt-in: asked for in a gating namespace", gating: wrap.GatingOptIn, namespaces: []string{"ns"}, pod: asks, gated: true},
		{name: "opt-in: asked for elsewhere", gating: wrap.GatingOptIn, namespaces: []string{"team-a"}, pod: asks,
			denied: `the gate controller does not act in namespace "ns" (klock-webhook --gating-namespaces, chart value gatingNamespaces)`},
		{name: "default: in a gating namespace", gating: wrap.GatingDefault, namespaces: []string{"team-a", "ns"}, pod: silent, gated: true},
		{name: "default: elsewhere, not gated", gating: wrap.GatingDefault, namespaces: []string{"team-a"}, pod: silent},
		{name: "default: asked for elsewhere", gating: wrap.GatingDefault, namespaces: []string{"team-a"}, pod: asks,
			denied: `the gate controller does not act in namespace "ns"`},
		{name: "default: every namespace when none is given", gating: wrap.GatingDefault, pod: silent, gated: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions
			opts.Gating, opts.GatingNamespaces = tc.gating, tc.namespaces
			req := podRequest(admissionv1.Create, rawPod(t, tc.pod))
			resp := NewPodHandler(Scheme(), opts, nil, nil).Handle(context.Background(), req)
			if tc.denied != "" {
				if resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, tc.denied) {
					t.Errorf("allowed %v, result %+v, want a denial containing %q", resp.Allowed, resp.Result, tc.denied)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			var pod corev1.Pod
			if err := json.Unmarshal(apply(t, req.Object.Raw, resp), &pod); err != nil {
				t.Fatal(err)
			}
			if !wrap.Wrapped(&pod, opts) {
				t.Error("not wrapped")
			}
			if wrap.Gated(&pod) != tc.gated || (pod.Labels[wrap.LabelGated] == "true") != tc.gated {
				t.Errorf("gates %v, labels %v; want gated %v", pod.Spec.SchedulingGates, pod.Labels, tc.gated)
			}
		})
	}
}

// Called again after another webhook put its wrapper in front of klock
// (reinvocation), the handler puts klock back in front; called once more,
// it changes nothing.
func TestPodHandlerReinvoked(t *testing.T) {
	h := NewPodHandler(Scheme(), testOptions, nil, nil)
	raw := rawPod(t, builders.MakePod("p", "").Lease("x").Container("app", "busybox", "work").Obj())
	raw = apply(t, raw, h.Handle(context.Background(), podRequest(admissionv1.Create, raw)))
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	c := &pod.Spec.Containers[0]
	c.Command, c.Args = []string{"/vault/vault-env"}, c.Command
	raw = rawPod(t, &pod)
	resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw))
	if !resp.Allowed || len(resp.Patches) == 0 || len(resp.Warnings) != 1 {
		t.Fatalf("allowed %v, %d patches, warnings %q: %+v", resp.Allowed, len(resp.Patches), resp.Warnings, resp.Result)
	}
	raw = apply(t, raw, resp)
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	want := []string{wrap.BinaryPath, "--lease=x", "--", "/vault/vault-env", "work"}
	if diff := cmp.Diff(want, pod.Spec.Containers[0].Command); diff != "" {
		t.Errorf("command (-want,+got):\n%s", diff)
	}
	if resp := h.Handle(context.Background(), podRequest(admissionv1.Create, raw)); !resp.Allowed || len(resp.Patches) > 0 {
		t.Errorf("a third call: allowed %v, patches %v", resp.Allowed, resp.Patches)
	}
}

// A typo in a klock.io/ key would lose the option without a word; the
// author is told the key meant.
func TestTypoWarnings(t *testing.T) {
	h := NewPodHandler(Scheme(), testOptions, nil, nil)
	pod := builders.MakePod("p", "").Lease("x").Annotation("klock.io/wiat", "10s").Annotation("klock.io/zzzzzzzzzzzz", "1").Container("app", "busybox", "work").Obj()
	resp := h.Handle(context.Background(), podRequest(admissionv1.Create, rawPod(t, pod)))
	want := []string{
		`annotation "klock.io/wiat" is not one klock knows, and is ignored: did you mean klock.io/wait?`,
		`annotation "klock.io/zzzzzzzzzzzz" is not one klock knows, and is ignored: klock reads klock.io/lease, klock.io/container, klock.io/wait, klock.io/conflict-exit-code, klock.io/lease-duration, klock.io/renew-deadline, klock.io/retry-period, klock.io/signal, klock.io/kill-after, klock.io/cleanup-lease, klock.io/labels, klock.io/max-holders, klock.io/order, klock.io/queue-ttl, klock.io/gate, klock.io/start-timeout, klock.io/skip`,
	}
	if !resp.Allowed || !cmp.Equal(want, []string(resp.Warnings)) {
		t.Errorf("allowed %v, warnings (-want,+got):\n%s", resp.Allowed, cmp.Diff(want, []string(resp.Warnings)))
	}
}
