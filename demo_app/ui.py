"""The notes window (Tk). All logic lives in :mod:`demo_app.model`.

Sync runs in the client's background threads; their notifications are
queued by the model and drained here every 100 ms on Tk's own thread, so no
widget is touched from another thread and the UI never waits on the network.
"""

from __future__ import annotations

import tkinter as tk
from tkinter import messagebox, ttk

from .model import NotesModel, describe_rejection

ALL_TAGS = "All tags"
POLL_MS = 100


class NotesWindow:
    """The main window: notes list with filters, an editor, a status bar."""

    def __init__(
        self, root: tk.Tk | tk.Toplevel, model: NotesModel, title: str = "idsync notes"
    ) -> None:
        self.root = root
        self.model = model
        self.selected: str | None = None
        self._shown: list[str] = []
        root.title(title)
        root.geometry("760x480")
        root.minsize(600, 360)
        self._build()
        self.refresh_notes()
        self.refresh_status()
        self._poll()

    # -- layout -------------------------------------------------------------

    def _build(self) -> None:
        top = ttk.Frame(self.root, padding=6)
        top.pack(side=tk.TOP, fill=tk.X)
        ttk.Label(top, text="Search").pack(side=tk.LEFT)
        self.search_var = tk.StringVar(master=self.root)
        self.search_var.trace_add("write", lambda *_: self.refresh_notes())
        self.search_entry = ttk.Entry(top, textvariable=self.search_var, width=20)
        self.search_entry.pack(side=tk.LEFT, padx=4)
        self.tag_filter = ttk.Combobox(top, values=[ALL_TAGS], state="readonly", width=16)
        self.tag_filter.set(ALL_TAGS)
        self.tag_filter.bind("<<ComboboxSelected>>", lambda _: self.refresh_notes())
        self.tag_filter.pack(side=tk.LEFT, padx=4)
        self.new_button = ttk.Button(top, text="New note", command=self.new_note)
        self.new_button.pack(side=tk.RIGHT)
        self.delete_button = ttk.Button(top, text="Delete", command=self.delete_note)
        self.delete_button.pack(side=tk.RIGHT, padx=4)

        self._build_status_bar()

        body = ttk.PanedWindow(self.root, orient=tk.HORIZONTAL)
        body.pack(fill=tk.BOTH, expand=True, padx=6, pady=(0, 6))
        self.note_list = tk.Listbox(body, exportselection=False, activestyle="none", width=30)
        self.note_list.bind("<<ListboxSelect>>", lambda _: self._on_select())
        body.add(self.note_list, weight=1)

        editor = ttk.Frame(body, padding=(8, 0, 0, 0))
        body.add(editor, weight=2)
        ttk.Label(editor, text="Title").pack(anchor=tk.W)
        self.title_entry = ttk.Entry(editor)
        self.title_entry.pack(fill=tk.X)
        ttk.Label(editor, text="Text").pack(anchor=tk.W, pady=(6, 0))
        self.body_text = tk.Text(editor, height=10, wrap=tk.WORD, undo=True)
        self.body_text.pack(fill=tk.BOTH, expand=True)
        tags = ttk.Frame(editor)
        tags.pack(fill=tk.X, pady=4)
        self.tags_label = ttk.Label(tags, text="Tags: –")
        self.tags_label.pack(side=tk.LEFT)
        self.tag_entry = ttk.Entry(tags, width=14)
        self.tag_entry.pack(side=tk.LEFT, padx=4)
        self.add_tag_button = ttk.Button(tags, text="Add tag", command=self.add_tag)
        self.add_tag_button.pack(side=tk.LEFT)
        self.remove_tag_button = ttk.Button(tags, text="Remove tag", command=self.remove_tag)
        self.remove_tag_button.pack(side=tk.LEFT, padx=4)
        self.save_button = ttk.Button(editor, text="Save", command=self.save)
        self.save_button.pack(anchor=tk.E)

    def _build_status_bar(self) -> None:
        bar = ttk.Frame(self.root, padding=(6, 2), relief=tk.SUNKEN)
        bar.pack(side=tk.BOTTOM, fill=tk.X)
        self.state_label = ttk.Label(bar, width=18)
        self.state_label.pack(side=tk.LEFT)
        self.pending_label = ttk.Label(bar, width=20)
        self.pending_label.pack(side=tk.LEFT)
        self.sync_label = ttk.Label(bar, width=18)
        self.sync_label.pack(side=tk.LEFT)
        self.offline_var = tk.BooleanVar(master=self.root, value=self.model.working_offline)
        self.offline_check = ttk.Checkbutton(
            bar, text="Work offline", variable=self.offline_var, command=self._toggle_offline
        )
        self.offline_check.pack(side=tk.RIGHT)
        self.rejected_button = ttk.Button(bar, text="Rejected (0)", command=self.show_rejected)
        self.rejected_button.pack(side=tk.RIGHT, padx=4)
        # The last error gets a line of its own, above the bar: it can be long.
        self.error_label = ttk.Label(self.root, foreground="#a00", padding=(8, 0))
        self.error_label.pack(side=tk.BOTTOM, fill=tk.X)

    # -- refreshing ---------------------------------------------------------

    def _poll(self) -> None:
        kinds = self.model.drain_updates()
        if "notes" in kinds:
            self.refresh_notes()
            self._refresh_editor_if_clean()
        if kinds:
            self.refresh_status()
        self.root.after(POLL_MS, self._poll)

    def refresh_notes(self) -> None:
        """Re-read the list (keeps the selection)."""
        tag = self.tag_filter.get()
        notes = self.model.notes(tag=None if tag == ALL_TAGS else tag, search=self.search_var.get())
        self._shown = [n.id for n in notes]
        self.note_list.delete(0, tk.END)
        for note in notes:
            suffix = f"   [{', '.join(note.tags)}]" if note.tags else ""
            self.note_list.insert(tk.END, note.title + suffix)
        if self.selected in self._shown:
            index = self._shown.index(self.selected)
            self.note_list.selection_set(index)
            self.note_list.see(index)
        self.tag_filter.configure(values=[ALL_TAGS, *self.model.all_tags()])

    def refresh_status(self) -> None:
        """Re-read the status bar."""
        line = self.model.status_line()
        self.state_label.configure(text=line.state)
        self.pending_label.configure(text=line.pending)
        self.sync_label.configure(text=line.last_sync)
        self.error_label.configure(text=line.error)
        self.rejected_button.configure(text=f"Rejected ({len(self.model.rejected())})")

    def _editor_text(self) -> tuple[str, str]:
        return self.title_entry.get(), self.body_text.get("1.0", "end-1c")

    def _load_editor(self) -> None:
        note = self.model.note(self.selected) if self.selected else None
        self.title_entry.delete(0, tk.END)
        self.body_text.delete("1.0", tk.END)
        if note is None:
            self.selected = None
            self.tags_label.configure(text="Tags: –")
            self._loaded = ("", "")
            return
        self.title_entry.insert(0, note.title)
        self.body_text.insert("1.0", note.body)
        self.tags_label.configure(text="Tags: " + (", ".join(note.tags) or "–"))
        self._loaded = (note.title, note.body)

    def _refresh_editor_if_clean(self) -> None:
        # Remote edits replace the editor's text only if the user has not typed.
        if self.selected is None or self._editor_text() == getattr(self, "_loaded", None):
            self._load_editor()

    def _on_select(self) -> None:
        chosen = self.note_list.curselection()
        if chosen:
            self.selected = self._shown[chosen[0]]
            self._load_editor()

    # -- actions ------------------------------------------------------------

    def select(self, note_id: str) -> None:
        """Select a note in the list and open it in the editor."""
        self.selected = note_id
        self.refresh_notes()
        self._load_editor()

    def new_note(self) -> None:
        """Create a note and open it."""
        self.select(self.model.create_note())
        self.title_entry.focus_set()
        self.title_entry.select_range(0, tk.END)

    def save(self) -> None:
        """Save the editor's title and body."""
        if self.selected is None:
            return
        title, body = self._editor_text()
        try:
            self.model.save(self.selected, title.strip() or "Untitled", body)
        except (KeyError, ValueError) as exc:
            messagebox.showerror("Cannot save", str(exc), parent=self.root)
        self._loaded = self._editor_text()
        self.refresh_notes()

    def delete_note(self) -> None:
        """Delete the selected note."""
        if self.selected is not None:
            self.model.delete_note(self.selected)
            self.selected = None
            self._load_editor()
            self.refresh_notes()

    def add_tag(self) -> None:
        """Add the tag typed in the tag box to the selected note."""
        self._change_tag(self.model.add_tag)

    def remove_tag(self) -> None:
        """Remove the tag typed in the tag box from the selected note."""
        self._change_tag(self.model.remove_tag)

    def _change_tag(self, action: object) -> None:
        if self.selected is None:
            return
        try:
            action(self.selected, self.tag_entry.get())  # type: ignore[operator]
        except ValueError as exc:
            messagebox.showerror("Tag", str(exc), parent=self.root)
            return
        self.tag_entry.delete(0, tk.END)
        self.tags_label.configure(
            text="Tags: " + (", ".join(self.model.tags(self.selected)) or "–")
        )
        self.refresh_notes()

    def _toggle_offline(self) -> None:
        self.model.set_working_offline(self.offline_var.get())

    def show_rejected(self) -> None:
        """A small window listing refused changes, each dismissable."""
        dialog = tk.Toplevel(self.root)
        dialog.title("Changes the server refused")
        listbox = tk.Listbox(dialog, width=80, height=10)
        listbox.pack(fill=tk.BOTH, expand=True, padx=6, pady=6)
        rejected = self.model.rejected()
        for rejection in rejected:
            listbox.insert(tk.END, describe_rejection(rejection))

        def dismiss() -> None:
            for index in reversed(listbox.curselection()):
                self.model.dismiss(rejected[index].id)
                listbox.delete(index)
                del rejected[index]

        ttk.Button(dialog, text="Dismiss selected", command=dismiss).pack(pady=(0, 6))
