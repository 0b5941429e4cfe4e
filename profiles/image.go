package profiles

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ImageSpec is everything the bake pipeline needs to build one profile's
// artifacts.
type ImageSpec struct {
	Profile, Description string
	// Chain is the inheritance chain, parents first, Profile last.
	Chain []string
	// Arch is the architecture the image is for, one of Arches; "" means
	// DefaultArch.
	Arch   string
	Stage  Stage
	Kernel Kernel
	// Cmdline is the kernel command line, one argument per item.
	Cmdline []string
	// Outputs are the artifacts to make: initramfs | raw | iso | tar;
	// [initramfs] when the chain sets none.
	Outputs []string
	// Persist gives a disk (output raw) a data partition that holds the
	// writable layer over its read-only root, so what the applier and
	// the system change survives a reboot; without it the layer is in
	// memory and every boot starts from the image.
	Persist bool
	// SlotSize is the size of each of a disk's two root slots
	// (install.slot_size); 0: twice the root image.
	SlotSize int64
	// Bundle carries the rendered configuration: Default is
	// RenderProfile(Profile, nil, ""), Nodes every inventory node that
	// boots Profile, sorted by name.
	Bundle *nodeconf.Bundle
	// Sources are the site files that contributed: absolute paths, or
	// "embedded:profiles/NAME.yaml" for the default site.
	Sources []string
	// SiteDir is the site's directory (absolute), against which its
	// relative paths were resolved; "" for the embedded site. A bake
	// names the site's files relative to it, so that the same site in
	// two checkouts bakes the same manifest.
	SiteDir string
	// Environment is the site's environment the spec was made for (""
	// for a site without environments).
	Environment string
	// Revision is the site's git revision, when the caller knows it
	// (siterev.Describe); the manifest records it.
	Revision *Revision
}

// Revision is where a site's files came from in git: the commit of the
// work tree's HEAD and, when the work tree differs from it, the files
// that differ (relative to the site).
type Revision struct {
	Commit  string   `json:"commit"`
	Dirty   bool     `json:"dirty,omitempty"`
	Changed []string `json:"changed,omitempty"`
}

// Stage is the base root tree of an image. Exactly one field is set; paths
// are absolute (relative ones in the site are resolved against the site
// directory).
type Stage struct {
	Busybox     *BusyboxStage // {busybox: {}}
	Tarball     string        // {tarball: PATH}, a tar (optionally compressed)
	OCI         string        // {oci: PATH}, an OCI image layout
	Dir         string        // {dir: PATH}, a directory
	Debootstrap *Debootstrap  // {debootstrap: {suite: bookworm, ...}}
	Profile     string        // {profile: NAME}: the baked tree of another profile
}

// BusyboxStage is a minimal root built from the host's busybox-static. It
// has no options yet.
type BusyboxStage struct{}

// Debootstrap builds a Debian root with debootstrap.
type Debootstrap struct {
	Suite   string
	Variant string
	// Mirror is the archive debootstrap reads; with a Snapshot it is
	// SnapshotURL/Snapshot/ (Image composes it).
	Mirror  string
	Include []string
	// Snapshot pins the package set to the archive as it was then
	// (20240601T000000Z), read from SnapshotURL (default
	// DefaultSnapshotURL): the same snapshot gives the same packages.
	Snapshot    string
	SnapshotURL string
}

// Kernel says where the image's kernel comes from: Path (a host file),
// From "stage" (the stage's own /boot), or Package (a Debian kernel package
// for the image's architecture, e.g. linux-image-arm64, fetched and
// unpacked, never installed). Modules are found beside it.
type Kernel struct {
	Path    string
	From    string
	Package string
}

var (
	stageKinds      = []string{"busybox", "tarball", "oci", "dir", "debootstrap", "profile"}
	debootstrapKeys = []string{"suite", "variant", "mirror", "include", "snapshot", "snapshot_url"}
)

// Outputs lists the artifact kinds a profile may ask for.
var Outputs = []string{"initramfs", "raw", "iso", "tar"}

// parseStage checks and decodes a stage value (paths left as written).
func parseStage(v *value, path string, errs *ErrorList) (Stage, bool) {
	var st Stage
	if !expectMap(v, path, errs) {
		return st, false
	}
	if len(v.ents) != 1 {
		errs.Add(v.pos, path, "set exactly one of %s", strings.Join(stageKinds, ", "))
		return st, false
	}
	e := v.ents[0]
	fp := joinKey(path, e.key)
	ok := true
	str := func() string {
		s, good := scalarString(e.val, fp, errs)
		if good && s == "" {
			errs.Add(e.val.pos, fp, "empty")
			good = false
		}
		ok = ok && good
		return s
	}
	switch e.key {
	case "busybox":
		if e.val.kind != kNull && (e.val.kind != kMap || len(e.val.ents) != 0) {
			errs.Add(e.val.pos, fp, "busybox has no options yet: write {busybox: {}}")
			ok = false
		}
		st.Busybox = &BusyboxStage{}
	case "tarball":
		st.Tarball = str()
	case "oci":
		st.OCI = str()
	case "dir":
		st.Dir = str()
	case "profile":
		st.Profile = str()
	case "debootstrap":
		if !expectMap(e.val, fp, errs) {
			return st, false
		}
		d := &Debootstrap{}
		for _, f := range e.val.ents {
			ffp := joinKey(fp, f.key)
			switch f.key {
			case "suite":
				d.Suite, _ = scalarString(f.val, ffp, errs)
			case "variant":
				d.Variant, _ = scalarString(f.val, ffp, errs)
			case "mirror":
				d.Mirror, _ = scalarString(f.val, ffp, errs)
			case "include":
				d.Include, _ = stringList(f.val, ffp, errs)
			case "snapshot":
				if text, good := scalarString(f.val, ffp, errs); good {
					ts, err := parseSnapshot(text)
					if err != nil {
						errs.Add(f.val.pos, ffp, "%v", err)
						ok = false
					}
					d.Snapshot = ts
				}
			case "snapshot_url":
				d.SnapshotURL, _ = scalarString(f.val, ffp, errs)
			default:
				errs.Add(f.kpos, ffp, "unknown key %q%s", f.key, suggestList(f.key, debootstrapKeys))
				ok = false
			}
		}
		if e.val.get("mirror") != nil && e.val.get("snapshot") != nil {
			errs.Add(e.val.entry("snapshot").kpos, fp+".snapshot", "set either mirror or snapshot (which makes the mirror SNAPSHOT_URL/TIMESTAMP/), not both")
			ok = false
		}
		if d.Suite == "" {
			errs.Add(e.val.pos, fp+".suite", "required")
			ok = false
		}
		st.Debootstrap = d
	default:
		errs.Add(e.kpos, fp, "unknown stage kind %q (want one of %s)", e.key, strings.Join(stageKinds, ", "))
		ok = false
	}
	return st, ok
}

func parseKernel(v *value, path string, errs *ErrorList) (Kernel, bool) {
	var k Kernel
	if !expectMap(v, path, errs) {
		return k, false
	}
	ok := true
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "path":
			k.Path, _ = scalarString(e.val, fp, errs)
		case "from":
			k.From, _ = scalarString(e.val, fp, errs)
			if k.From != "stage" {
				errs.Add(e.val.pos, fp, "%q: the only source is stage", k.From)
				ok = false
			}
		case "package":
			k.Package, _ = scalarString(e.val, fp, errs)
			if k.Package == "" {
				errs.Add(e.val.pos, fp, "empty")
				ok = false
			}
		default:
			errs.Add(e.kpos, fp, "unknown key %q (want path, from or package)", e.key)
			ok = false
		}
	}
	set := 0
	for _, s := range []string{k.Path, k.From, k.Package} {
		if s != "" {
			set++
		}
	}
	if set != 1 && ok {
		errs.Add(v.pos, path, "set exactly one of path, from and package")
		ok = false
	}
	return k, ok
}

func parseOutputs(v *value, path string, errs *ErrorList) []string {
	outs, pos := stringList(v, path, errs)
	var seen []string
	for i, o := range outs {
		if !slices.Contains(Outputs, o) {
			errs.Add(pos[i], path+nodeconf.Index(i), "unknown output %q (want %s)", o, strings.Join(Outputs, ", "))
		} else if slices.Contains(seen, o) {
			errs.Add(pos[i], path+nodeconf.Index(i), "%q is listed twice", o)
		}
		seen = append(seen, o)
	}
	return outs
}

// checkStages reports {profile: NAME} stages that name an unknown profile
// or loop back.
func (s *Site) checkStages(errs *ErrorList) {
	stageOf := func(name string) (string, *value) {
		r, ok := s.resolved[name]
		if !ok {
			return "", nil
		}
		v := r.fields["stage"]
		if v == nil || v.get("profile") == nil {
			return "", nil
		}
		return v.get("profile").text, v.get("profile")
	}
	reported := map[Pos]bool{}
	for _, name := range s.names {
		ref, v := stageOf(name)
		if v == nil || reported[v.pos] {
			continue
		}
		if s.profiles[ref] == nil {
			errs.Add(v.pos, "stage.profile", "unknown profile %q%s", ref, suggestList(ref, s.names))
			reported[v.pos] = true
			continue
		}
		// Follow the stages; a loop is reported once, at its
		// smallest profile (the others reach it or run through it).
		seen := []string{name}
		for cur := ref; cur != ""; cur, _ = stageOf(cur) {
			if cur == name && slices.Min(seen) == name {
				errs.Add(v.pos, "stage.profile", "stage loop: %s → %s", strings.Join(seen, " → "), cur)
			}
			if slices.Contains(seen, cur) {
				break
			}
			seen = append(seen, cur)
		}
	}
}

// Image returns the image specification of profile, with its rendered
// configuration bundle.
func (s *Site) Image(profile string) (*ImageSpec, error) {
	spec, err := s.ImageSettings(profile)
	if err != nil {
		return nil, err
	}
	def, err := s.RenderProfile(profile, nil, "")
	if err != nil {
		return nil, err
	}
	spec.Bundle = &nodeconf.Bundle{Profile: profile, Default: *def, Nodes: []nodeconf.Node{}}
	for _, n := range s.nodes {
		if n.Profile != profile {
			continue
		}
		rn, err := s.RenderNode(n.Name)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", n.Name, err)
		}
		spec.Bundle.Nodes = append(spec.Bundle.Nodes, *rn)
	}
	return spec, nil
}

// ImageSettings is Image without the bundle (nil): what makes the image
// but for the configurations it carries.
func (s *Site) ImageSettings(profile string) (*ImageSpec, error) {
	r, ok := s.resolved[profile]
	if !ok {
		return nil, fmt.Errorf("profile %q: %w", profile, ErrNotFound)
	}
	var errs ErrorList
	spec := &ImageSpec{Profile: profile, Chain: slices.Clone(r.chain), Outputs: []string{"initramfs"}, SiteDir: s.dir, Environment: s.Environment()}
	if v := r.fields["description"]; v != nil {
		spec.Description = v.text
	}
	if v := r.fields["arch"]; v != nil && v.kind != kNull {
		spec.Arch, _ = parseArch(v, "arch", &errs)
	}
	if v := r.fields["stage"]; v != nil {
		st, _ := parseStage(v, "stage", &errs)
		for _, p := range []*string{&st.Tarball, &st.OCI, &st.Dir} {
			*p = s.abs(*p)
		}
		if st.Debootstrap != nil {
			s.applyStage(st.Debootstrap)
		}
		spec.Stage = st
	} else {
		errs.Add(s.profiles[profile].pos, "stage", "profile %q has no stage (set stage in it or a parent: %s)", profile, strings.Join(r.chain, " → "))
	}
	if v := r.fields["kernel"]; v != nil {
		k, _ := parseKernel(v, "kernel", &errs)
		k.Path = s.abs(k.Path)
		spec.Kernel = k
	} else {
		errs.Add(s.profiles[profile].pos, "kernel", "profile %q has no kernel (set kernel in it or a parent: %s)", profile, strings.Join(r.chain, " → "))
	}
	if v := r.fields["cmdline"]; v != nil {
		spec.Cmdline, _ = stringList(v, "cmdline", &errs)
	}
	if v := r.fields["outputs"]; v != nil {
		spec.Outputs = parseOutputs(v, "outputs", &errs)
	}
	if v := r.fields["persist"]; v != nil {
		spec.Persist, _ = scalarBool(v)
	}
	spec.SlotSize = slotSize(r)
	if len(errs) > 0 {
		return nil, errs.Err()
	}
	for _, pn := range r.chain {
		spec.Sources = append(spec.Sources, s.profiles[pn].source)
	}
	if s.nodesSource != "" && slices.ContainsFunc(s.nodes, func(n *node) bool { return n.Profile == profile }) {
		spec.Sources = append(spec.Sources, s.nodesSource)
	}
	if s.servicesSource != "" { // every node's facts, and the services placed
		spec.Sources = append(spec.Sources, s.servicesSource)
	}
	for _, src := range s.envSources() {
		if !slices.Contains(spec.Sources, src) {
			spec.Sources = append(spec.Sources, src)
		}
	}
	return spec, nil
}

// abs resolves a site-relative path against the site directory.
func (s *Site) abs(p string) string {
	if p == "" || filepath.IsAbs(p) || s.dir == "" {
		return p
	}
	return filepath.Join(s.dir, p)
}

// IsNotFound reports whether err says a node or profile does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
