// Package v1alpha1 holds the klock.io/v1alpha1 API: ClusterLockPolicy, which
// puts the pods it selects under a lock without annotating each workload.
//
// +kubebuilder:object:generate=true
// +groupName=klock.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is klock.io/v1alpha1.
	GroupVersion = schema.GroupVersion{Group: "klock.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this group version.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
