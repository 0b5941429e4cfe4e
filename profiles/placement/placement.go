// Package placement places a service's instances on the nodes of its group,
// deterministically and stably, by rendezvous (highest-random-weight)
// hashing of (service, node).
//
// Every node of the group gets a weight, Weight(service, node): a hash, so
// it depends on nothing but the two names. Without a spread label the
// service goes to the nodes of highest weight, pinned nodes first. With
// one, the nodes are put in buckets by their value of the label, each
// bucket ordered pinned first, then by weight; the node at position j of
// its bucket has level j, and the service goes to the nodes of lowest
// (level, -weight): one instance per value before any value gets a second,
// and the hash breaks every tie.
//
// So the placement is a pure function of the names, the group, the count
// and the pins: reordering the inventory moves nothing; adding a node
// moves at most one instance of each service, onto the new node (with
// probability about instances/nodes); removing a node moves only the
// instances it held. The property tests check these over random
// inventories.
package placement

import (
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"slices"
)

// All is Request.Instances for a service placed on every eligible node of
// its group.
const All = -1

// Member is one node of a service's group.
type Member struct {
	Node string
	// Spread is the node's value of the service's spread label ("" when
	// the node has none: such nodes share one value).
	Spread string
	// Pinned nodes always get an instance; Denied nodes never do.
	Pinned, Denied bool
}

// Request is one service to place.
type Request struct {
	Service string
	// Members is the group, in any order; node names are unique.
	Members []Member
	// Instances is the number of instances, or All.
	Instances int
	// Spread honours Member.Spread.
	Spread bool
}

// Errors of Place (wrapped, with the numbers). The site model checks
// these first and reports them at their lines; Place refuses them again.
var (
	ErrEmptyGroup    = errors.New("the group has no node")
	ErrTooFew        = errors.New("more instances than eligible nodes")
	ErrTooManyPins   = errors.New("more pinned nodes than instances")
	ErrPinnedDenied  = errors.New("a node both pins and denies the service")
	ErrDuplicateNode = errors.New("a node is twice in the group")
)

// Weight is the rendezvous weight of node for service: FNV-1a over
// "service\x00node", finished by SplitMix64's mixer so that names that
// differ in one character get unrelated weights.
func Weight(service, node string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(service); i++ {
		h = (h ^ uint64(service[i])) * prime
	}
	h = (h ^ 0) * prime
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// cand is one eligible member with its weight.
type cand struct {
	Member
	w uint64
}

// before orders candidates pinned first, then by weight (highest first),
// then by name.
func before(a, b cand) int {
	switch {
	case a.Pinned != b.Pinned:
		if a.Pinned {
			return -1
		}
		return 1
	case a.w != b.w:
		if a.w > b.w {
			return -1
		}
		return 1
	}
	return cmp.Compare(a.Node, b.Node)
}

// Place returns the nodes r's service goes to, sorted by name.
func Place(r Request) ([]string, error) {
	cands, k, err := prepare(r, false)
	if err != nil {
		return nil, err
	}
	chosen := choose(cands, k, r.Spread)
	out := make([]string, len(chosen))
	for i, c := range chosen {
		out[i] = c.Node
	}
	slices.Sort(out)
	return out, nil
}

// prepare checks r and returns the eligible members, weighed, with the
// number of instances. With sorted, or when choose needs it, they are
// ordered (see before); otherwise only as far as choose looks: the k
// first, or the k first of each spread value.
func prepare(r Request, sorted bool) ([]cand, int, error) {
	if len(r.Members) == 0 {
		return nil, 0, fmt.Errorf("service %s: %w", r.Service, ErrEmptyGroup)
	}
	seen := make(map[string]bool, len(r.Members))
	cands := make([]cand, 0, len(r.Members))
	pins := 0
	for _, m := range r.Members {
		if seen[m.Node] {
			return nil, 0, fmt.Errorf("service %s: node %s: %w", r.Service, m.Node, ErrDuplicateNode)
		}
		seen[m.Node] = true
		switch {
		case m.Pinned && m.Denied:
			return nil, 0, fmt.Errorf("service %s: node %s: %w", r.Service, m.Node, ErrPinnedDenied)
		case m.Denied:
			continue
		case m.Pinned:
			pins++
		}
		cands = append(cands, cand{Member: m, w: Weight(r.Service, m.Node)})
	}
	k := r.Instances
	if k == All {
		k = len(cands)
	}
	switch {
	case k < 0:
		return nil, 0, fmt.Errorf("service %s: %d instances", r.Service, k)
	case k > len(cands):
		return nil, 0, fmt.Errorf("service %s: %d instances, %d eligible nodes: %w", r.Service, k, len(cands), ErrTooFew)
	case pins > k:
		return nil, 0, fmt.Errorf("service %s: %d pinned nodes, %d instances: %w", r.Service, pins, k, ErrTooManyPins)
	}
	switch {
	case sorted:
		slices.SortFunc(cands, before)
	case k == len(cands):
		// Every one is chosen: the order does not matter.
	case !r.Spread:
		cands = firstK(cands, k)
	default:
		cands = firstKPerValue(cands, k)
	}
	return cands, k, nil
}

// firstK returns the k first of cands by before, in order (cands is
// reordered): a partial sort, since k is usually a handful of thousands.
func firstK(cands []cand, k int) []cand {
	if k == 0 {
		return cands[:0]
	}
	if 4*k >= len(cands) {
		slices.SortFunc(cands, before)
		return cands[:k]
	}
	// A max-heap (by before) of the best k seen so far: its root is the
	// worst of them.
	h := cands[:k]
	worse := func(i, j int) bool { return before(h[i], h[j]) > 0 }
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= k {
				return
			}
			if r := l + 1; r < k && worse(r, l) {
				l = r
			}
			if !worse(l, i) {
				return
			}
			h[i], h[l] = h[l], h[i]
			i = l
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i)
	}
	for _, c := range cands[k:] {
		if before(c, h[0]) < 0 {
			h[0] = c
			down(0)
		}
	}
	slices.SortFunc(h, before)
	return h
}

// firstKPerValue returns, ordered by before, the k first of each spread
// value's candidates: choose takes no more than k of one value.
func firstKPerValue(cands []cand, k int) []cand {
	byValue := map[string][]cand{}
	var values []string
	for _, c := range cands {
		if _, ok := byValue[c.Spread]; !ok {
			values = append(values, c.Spread)
		}
		byValue[c.Spread] = append(byValue[c.Spread], c)
	}
	out := cands[:0]
	for _, v := range values {
		out = append(out, firstK(byValue[v], min(k, len(byValue[v])))...)
	}
	slices.SortFunc(out, before)
	return out
}

// choose picks k of cands (ordered by before): the first k without
// spread; with it, the pinned ones and then the unpinned of lowest
// (level, -weight), the level being a node's position in its bucket.
func choose(cands []cand, k int, spread bool) []cand {
	if !spread || k == len(cands) {
		return cands[:k]
	}
	// Buckets keep the order of cands: pinned first, then by weight.
	index := map[string]int{}
	var buckets [][]cand
	for _, c := range cands {
		i, ok := index[c.Spread]
		if !ok {
			i = len(buckets)
			index[c.Spread] = i
			buckets = append(buckets, nil)
		}
		buckets[i] = append(buckets[i], c)
	}
	out := make([]cand, 0, k)
	h := make(levelHeap, 0, len(buckets))
	for _, b := range buckets {
		j := 0
		for j < len(b) && b[j].Pinned {
			out = append(out, b[j])
			j++
		}
		if j < len(b) {
			h = append(h, &bucket{nodes: b, next: j})
		}
	}
	heap.Init(&h)
	for len(out) < k {
		b := h[0]
		out = append(out, b.nodes[b.next])
		b.next++
		if b.next == len(b.nodes) {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return out
}

// bucket is the members with one spread value; next is the first not yet
// chosen, and its level.
type bucket struct {
	nodes []cand
	next  int
}

// levelHeap orders buckets by their next node's (level, -weight, name).
type levelHeap []*bucket

func (h levelHeap) Len() int { return len(h) }
func (h levelHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.next != b.next {
		return a.next < b.next
	}
	return before(a.nodes[a.next], b.nodes[b.next]) < 0
}
func (h levelHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *levelHeap) Push(x any)   { *h = append(*h, x.(*bucket)) }
func (h *levelHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Choice says why a service is or is not on one node of its group.
type Choice struct {
	Placed bool
	// Rank is the node's place among the eligible members by weight
	// (1 = highest), of Eligible; 0 for a denied node.
	Rank, Eligible int
	// Level is the node's position in its spread bucket (with Spread).
	Level          int
	Pinned, Denied bool
}

// Explain says why r's service is or is not on node, a member of r's
// group (false when it is not one).
func Explain(r Request, node string) (Choice, bool, error) {
	cands, k, err := prepare(r, true)
	if err != nil {
		return Choice{}, false, err
	}
	for _, m := range r.Members {
		if m.Node == node && m.Denied {
			return Choice{Denied: true, Eligible: len(cands)}, true, nil
		}
	}
	var c Choice
	found := false
	byWeight := slices.Clone(cands)
	slices.SortFunc(byWeight, func(a, b cand) int {
		a.Pinned, b.Pinned = false, false
		return before(a, b)
	})
	for i, x := range byWeight {
		if x.Node == node {
			c, found = Choice{Rank: i + 1, Eligible: len(cands), Pinned: x.Pinned}, true
			if r.Spread {
				for _, y := range cands {
					if y.Node == node {
						break
					}
					if y.Spread == x.Spread {
						c.Level++
					}
				}
			}
		}
	}
	if !found {
		return Choice{}, false, nil
	}
	for _, x := range choose(cands, k, r.Spread) {
		if x.Node == node {
			c.Placed = true
		}
	}
	return c, true, nil
}

// Move is how one service's hosts differ between two placements.
type Move struct {
	Service string
	// Removed are the hosts it leaves, Added those it comes to (sorted).
	Removed, Added []string
	// New and Gone mark a service only in the new, or only in the old,
	// placement.
	New, Gone bool
}

// Diff compares two placements, service → hosts (each sorted), and
// returns the services whose hosts differ, by name.
func Diff(old, cur map[string][]string) []Move {
	names := make([]string, 0, len(old)+len(cur))
	for s := range old {
		names = append(names, s)
	}
	for s := range cur {
		if _, ok := old[s]; !ok {
			names = append(names, s)
		}
	}
	slices.Sort(names)
	var out []Move
	for _, s := range names {
		o, inOld := old[s]
		n, inNew := cur[s]
		m := Move{Service: s, New: !inOld, Gone: !inNew}
		m.Removed = minus(o, n)
		m.Added = minus(n, o)
		if len(m.Removed) > 0 || len(m.Added) > 0 || m.New || m.Gone {
			out = append(out, m)
		}
	}
	return out
}

// minus returns the items of a that are not in b.
func minus(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}
