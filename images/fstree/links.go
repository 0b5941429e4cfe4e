package fstree

// LinkGroup is a set of regular files that are hardlinks of one another:
// one inode under several names.
type LinkGroup struct {
	// Head is the entry the others link to (its LinkTo is empty); it holds
	// the content and metadata the whole group shares.
	Head *Entry
	// Members are every name of the inode, Head included, in Walk order.
	Members []*Entry
}

// Links returns the hardlink groups of t with two or more names, keyed by
// each member's path. An entry whose LinkTo names a missing entry or a
// non-regular one is not grouped: writers treat it as a plain file with its
// own Data.
func (t *Tree) Links() map[string]*LinkGroup {
	t.init()
	out := map[string]*LinkGroup{}
	heads := map[string]*LinkGroup{}
	for _, e := range t.Walk() {
		if e.Type != Regular || e.LinkTo == "" {
			continue
		}
		head := t.head(e)
		if head == nil {
			continue
		}
		g := heads[head.Path]
		if g == nil {
			g = &LinkGroup{Head: head}
			heads[head.Path] = g
		}
		g.Members = append(g.Members, e)
	}
	for _, g := range heads {
		g.Members = append(g.Members, g.Head)
		sortEntries(g.Members)
		for _, m := range g.Members {
			out[m.Path] = g
		}
	}
	return out
}

// head follows e's LinkTo chain to the entry that holds the content, or
// returns nil when the chain breaks (missing target, a non-regular target,
// or a cycle).
func (t *Tree) head(e *Entry) *Entry {
	cur := e
	for range len(t.entries) {
		if cur.LinkTo == "" {
			if cur == e {
				return nil
			}
			return cur
		}
		next := t.entries[cur.LinkTo]
		if next == nil || next.Type != Regular {
			return nil
		}
		cur = next
	}
	return nil
}
