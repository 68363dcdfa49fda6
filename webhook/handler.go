// Package webhook admits pods and workloads for klock. The pod handler
// decodes a pod, applies the ClusterLockPolicy that selects it (package
// policy), asks what its image runs when the container sets no command (an
// ImageResolver, such as package images), wraps it with wrap.Mutate, adds
// the Lease permission warnings (an AccessReviewer, such as package
// leaseaccess) and answers with a JSON patch; it never admits a pod that
// asks for klock unwrapped. The workload handler copies a workload's
// klock.io/ annotations into its pod template. Package server runs them.
package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	klockv1alpha1 "github.com/klock-io/klock/api/v1alpha1"
	"github.com/klock-io/klock/webhook/policy"
	"github.com/klock-io/klock/webhook/wrap"
)

// ImageResolver reads what a container's image runs when the pod does not
// say: its ENTRYPOINT and CMD.
type ImageResolver interface {
	Resolve(ctx context.Context, pod *corev1.Pod, c *corev1.Container) (*wrap.ImageCommand, error)
}

// AccessReviewer says what may go wrong at run time with the Lease
// permissions of a pod's service account, as admission warnings.
type AccessReviewer interface {
	Warnings(ctx context.Context, pod *corev1.Pod) []string
}

// PolicySource tells the pod handler which ClusterLockPolicies may apply
// to a pod, and what the pod's workload is; policy.ClusterPolicies reads
// them from the manager's cache.
type PolicySource interface {
	// Candidates returns the policies whose namespace and pod selectors
	// match pod.
	Candidates(ctx context.Context, pod *corev1.Pod) ([]*klockv1alpha1.ClusterLockPolicy, error)
	// Workload returns the top of pod's chain of controllers.
	Workload(ctx context.Context, pod *corev1.Pod) (policy.Workload, error)
	// Current fails unless the source knows policy name at generation
	// generation or later.
	Current(ctx context.Context, name string, generation int64) error
}

// PodHandler admits pods: it wraps those annotated klock.io/lease, and
// those a ClusterLockPolicy selects.
type PodHandler struct {
	options  wrap.Options
	images   ImageResolver
	access   AccessReviewer
	policies PolicySource
	decoder  admission.Decoder
}

var _ admission.Handler = &PodHandler{}

// NewPodHandler returns the pod handler. images and access may be nil:
// containers without a command are then denied, and no permission warnings
// are given.
func NewPodHandler(scheme *runtime.Scheme, opts wrap.Options, images ImageResolver, access AccessReviewer) *PodHandler {
	return &PodHandler{options: opts, images: images, access: access, decoder: admission.NewDecoder(scheme)}
}

// WithPolicies makes the handler apply the ClusterLockPolicies from source.
func (h *PodHandler) WithPolicies(source PolicySource) *PodHandler {
	h.policies = source
	return h
}

// Handle wraps an annotated pod, or denies it with what to fix. It never
// admits an annotated pod unwrapped.
func (h *PodHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, outcome := h.handle(ctx, req)
	observe("Pod", outcome, start)
	return resp
}

func (h *PodHandler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create {
		return admission.Allowed(""), outcomeSkipped
	}
	pod := &corev1.Pod{}
	if err := h.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err), outcomeError
	}
	// The API server sends a pod's namespace in the request, and refuses a
	// pod that names another before it asks the webhook: a mismatch is a
	// request from somebody else, which must not make the webhook read
	// another namespace's pull secrets.
	if pod.Namespace != "" && pod.Namespace != req.Namespace {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("the pod's namespace is not the request's")), outcomeError
	}
	pod.Namespace = req.Namespace // not set yet on create
	original, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError
	}
	var warnings []string
	var applied *klockv1alpha1.ClusterLockPolicy
	if required, ok := ctx.Value(requiredPolicyKey{}).(requiredPolicy); ok {
		// Sent by a policy's entry: this replica must know that policy at
		// least as new as the entry, or it could let the pod in unwrapped.
		if h.policies == nil {
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("ClusterLockPolicy %s: this webhook runs without --policies", required.name)), outcomeError
		}
		if err := h.policies.Current(ctx, required.name, required.generation); err != nil {
			return admission.Errored(http.StatusServiceUnavailable, err), outcomeError
		}
	}
	if h.policies != nil {
		// A policy that cannot be read must not let the pod in unwrapped:
		// an error here fails the admission.
		candidates, err := h.policies.Candidates(ctx, pod)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, err), outcomeError
		}
		if len(candidates) > 0 {
			w, err := h.policies.Workload(ctx, pod)
			if err != nil {
				return admission.Errored(http.StatusInternalServerError, err), outcomeError
			}
			if applied, warnings, err = policy.ApplyPolicies(pod, candidates, w); err != nil {
				return admission.Denied(err.Error()), outcomeDenied
			}
		}
	}
	warnings = append(warnings, wrap.UnknownKeys(pod.Annotations)...)
	if !wrap.Wants(pod) {
		// Only a pod klock wraps is ever let through klock's gate.
		if err := wrap.ForeignGate(pod); err != nil {
			return admission.Denied(err.Error()), outcomeDenied
		}
		return admission.Allowed("").WithWarnings(warnings...), outcomeSkipped
	}
	return h.wrapPod(ctx, pod, original, applied, warnings)
}

// wrapPod wraps pod, which asks for klock (for policy applied, if not
// nil), and answers with the patch from original, with warnings and its
// own; or denies it with all there is to fix.
func (h *PodHandler) wrapPod(ctx context.Context, pod *corev1.Pod, original []byte, applied *klockv1alpha1.ClusterLockPolicy, warnings []string) (admission.Response, string) {
	var image *wrap.ImageCommand
	if i, ferr := wrap.Target(pod); ferr == nil && len(pod.Spec.Containers[i].Command) == 0 && h.images != nil {
		c := &pod.Spec.Containers[i]
		var err error
		if image, err = h.images.Resolve(ctx, pod, c); err != nil {
			// Mutate, without the image, lists everything else to fix too.
			_, merr := wrap.Mutate(pod.DeepCopy(), h.options, nil)
			return admission.Denied(fmt.Sprintf("reading the ENTRYPOINT and CMD of image %q failed: %v; %v", c.Image, err, merr)), outcomeDenied
		}
	}
	initBefore := len(pod.Spec.InitContainers)
	more, err := wrap.Mutate(pod, h.options, image)
	if err != nil {
		if applied != nil {
			return admission.Denied(fmt.Sprintf("wrapping the pod for ClusterLockPolicy %s: %v", applied.Name, err)), outcomeDenied
		}
		return admission.Denied(err.Error()), outcomeDenied
	}
	warnings = append(warnings, more...)
	if h.access != nil {
		warnings = append(warnings, h.access.Warnings(ctx, pod)...)
	}
	patch, err := podPatch(original, initBefore, pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), outcomeError
	}
	if len(patch) == 0 {
		// Wrapped already: this is a reinvocation, or a pod that was
		// created wrapped. Its warnings were given the first time.
		return admission.Allowed(""), outcomeSkipped
	}
	return admission.Patched("", patch...).WithWarnings(warnings...), outcomeWrapped
}

// podPatch is the JSON patch from the pod as decoded (original, its JSON)
// to mutated, which had initBefore init containers before wrap.Mutate. Both
// sides of the diff come from the same Go type, so the fields of the
// user's objects that it does not know (newer than this webhook) never
// show up as removals. The installer is added at index 0 with one add:
// a diff of the lists would rewrite the user's first init container into
// klock's and append a copy of it re-encoded from the Go type, losing
// those fields.
func podPatch(original []byte, initBefore int, mutated *corev1.Pod) ([]jsonpatch.JsonPatchOperation, error) {
	var installer *corev1.Container
	all := mutated.Spec.InitContainers
	if len(all) == initBefore+1 && all[0].Name == wrap.InitContainerName {
		installer = &all[0]
		mutated.Spec.InitContainers = all[1:]
		if len(mutated.Spec.InitContainers) == 0 {
			mutated.Spec.InitContainers = nil // as decoded: absent
		}
	}
	current, err := json.Marshal(mutated)
	mutated.Spec.InitContainers = all
	if err != nil {
		return nil, err
	}
	ops, err := jsonpatch.CreatePatch(original, current)
	if err != nil {
		return nil, err
	}
	switch {
	case installer == nil:
	case initBefore == 0:
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/initContainers", []corev1.Container{*installer}))
	default:
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/initContainers/0", *installer))
	}
	return ops, nil
}

type requiredPolicyKey struct{}

type requiredPolicy struct {
	name       string
	generation int64
}

// RequirePolicyFromPath serves the policies' entries (PolicyPath): it reads
// the policy and generation from the path, for the pod handler to check
// before it decides, then hands the request to next.
func RequirePolicyFromPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, gen, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, PolicyPathPrefix), "/")
		generation, err := strconv.ParseInt(gen, 10, 64)
		if name == "" || err != nil {
			http.Error(w, fmt.Sprintf("path %q: want %s<policy>/<generation>", r.URL.Path, PolicyPathPrefix), http.StatusNotFound)
			return
		}
		ctx := context.WithValue(r.Context(), requiredPolicyKey{}, requiredPolicy{name: name, generation: generation})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
