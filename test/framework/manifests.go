package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// CertManagerVersion is the cert-manager whose CRDs the manifests are
// checked against; its Go module ships them as plain YAML.
const CertManagerVersion = "v1.21.2"

// CertManagerCRDs returns the directory of cert-manager's CRDs in the Go
// module cache, downloading the module through the module proxy if needed.
func CertManagerCRDs() (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/cert-manager/cert-manager@"+CertManagerVersion).Output()
	if err != nil {
		return "", fmt.Errorf("downloading cert-manager %s for its CRDs: %w", CertManagerVersion, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", err
	}
	return filepath.Join(mod.Dir, "deploy", "crds"), nil
}

type warningFunc func(string)

func (f warningFunc) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	f(text)
}

// DryRunApply sends each object to the API server as a server-side apply
// with dryRun=All: the API server validates it completely, CRDs and
// admission included, and stores nothing. Namespaces are created for real,
// with their labels, since namespaced objects can only be dry-run in one
// that exists. It returns an error per rejected object, and passes the API
// server's warnings (a Pod Security violation, say) to warn.
func (cp *ControlPlane) DryRunApply(ctx context.Context, objs []*unstructured.Unstructured, warn func(string)) []error {
	config := rest.CopyConfig(cp.Config)
	config.WarningHandlerWithContext = warningFunc(warn)
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		return []error{err}
	}
	dc, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return []error{err}
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	var errs []error
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		if gvk.Kind == "Namespace" {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: obj.GetName(), Labels: obj.GetLabels()}}
			if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, err)
			}
			continue
		}
		mapping, err := mapper.RESTMapping(schema.GroupKind{Group: gvk.Group, Kind: gvk.Kind}, gvk.Version)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: the API server does not serve this kind: %w", gvk, obj.GetName(), err))
			continue
		}
		data, err := json.Marshal(obj.Object)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		force := true
		if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: "klock-test", DryRun: []string{metav1.DryRunAll}, Force: &force,
		}); err != nil {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err))
		}
	}
	return errs
}
