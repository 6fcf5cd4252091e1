"""The notes window (Tk). All logic lives in :mod:`demo_app.model`.

Sync runs in the client's background threads; their notifications are
queued by the model and drained here every 100 ms on Tk's own thread, so no
widget is touched from another thread and the UI never waits on the network.

Typed text is never thrown away: switching to another note, creating one or
closing the window first saves what the editor holds (autosave rather than a
question on every switch: the app promises that no write is lost, and a
save costs nothing offline; a note deleted meanwhile gets the text as a new
note).
"""

from __future__ import annotations

import logging
import tkinter as tk
from collections.abc import Callable
from tkinter import messagebox, simpledialog, ttk

from .model import NotesModel, describe_rejection

ALL_TAGS = "All tags"
POLL_MS = 100
_REFRESH_FAILED = "Could not show the notes"

log = logging.getLogger("idsync.demo")


class NotesWindow:
    """The main window: notes list with filters, an editor, a status bar.

    ``server_log``, when given, returns the output of a server this app
    started; a "Server log" button shows it.
    """

    def __init__(
        self,
        root: tk.Tk | tk.Toplevel,
        model: NotesModel,
        title: str = "idsync notes",
        server_log: Callable[[], list[str]] | None = None,
    ) -> None:
        self.root = root
        self.model = model
        self.selected: str | None = None
        self._shown: list[str] = []
        self._loaded: tuple[str, str] = ("", "")
        self._message = ""
        self.server_log = server_log
        self.confirm_dialog: tk.Toplevel | None = None
        self.log_window: tk.Toplevel | None = None
        root.title(title)
        root.geometry("760x480")
        root.minsize(600, 360)
        self._build()
        root.bind("<Control-s>", lambda _: self._shortcut(self.save))
        root.bind("<Control-n>", lambda _: self._shortcut(self.new_note))
        self._guarded(self._refresh_all)
        self._poll()

    # -- layout -------------------------------------------------------------

    def _build(self) -> None:
        top = ttk.Frame(self.root, padding=6)
        top.pack(side=tk.TOP, fill=tk.X)
        ttk.Label(top, text="Search").pack(side=tk.LEFT)
        self.search_var = tk.StringVar(master=self.root)
        self.search_var.trace_add("write", lambda *_: self._guarded(self.refresh_notes))
        self.search_entry = ttk.Entry(top, textvariable=self.search_var, width=20)
        self.search_entry.pack(side=tk.LEFT, padx=4)
        self.tag_filter = ttk.Combobox(top, values=[ALL_TAGS], state="readonly", width=16)
        self.tag_filter.set(ALL_TAGS)
        self.tag_filter.bind("<<ComboboxSelected>>", lambda _: self._guarded(self.refresh_notes))
        self.tag_filter.pack(side=tk.LEFT, padx=4)
        self.new_button = ttk.Button(top, text="New note (Ctrl+N)", command=self.new_note)
        self.new_button.pack(side=tk.RIGHT)
        self.delete_button = ttk.Button(top, text="Delete…", command=self.delete_note)
        self.delete_button.pack(side=tk.RIGHT, padx=4)
        if self.server_log is not None:
            self.log_button = ttk.Button(top, text="Server log", command=self.show_server_log)
            self.log_button.pack(side=tk.RIGHT)

        self._build_status_bar()
        self._build_conflict_bar()

        body = ttk.PanedWindow(self.root, orient=tk.HORIZONTAL)
        body.pack(fill=tk.BOTH, expand=True, padx=6, pady=(0, 6))
        listing = ttk.Frame(body)
        self.note_list = tk.Listbox(listing, exportselection=False, activestyle="none", width=30)
        self.list_scroll = ttk.Scrollbar(listing, orient=tk.VERTICAL, command=self.note_list.yview)
        self.note_list.configure(yscrollcommand=self.list_scroll.set)
        self.list_scroll.pack(side=tk.RIGHT, fill=tk.Y)
        self.note_list.pack(side=tk.LEFT, fill=tk.BOTH, expand=True)
        self.note_list.bind("<<ListboxSelect>>", lambda _: self._guarded(self._on_select))
        body.add(listing, weight=1)

        editor = ttk.Frame(body, padding=(8, 0, 0, 0))
        body.add(editor, weight=2)
        ttk.Label(editor, text="Title").pack(anchor=tk.W)
        self.title_entry = ttk.Entry(editor)
        self.title_entry.pack(fill=tk.X)
        ttk.Label(editor, text="Text").pack(anchor=tk.W, pady=(6, 0))
        bottom = ttk.Frame(editor)
        bottom.pack(side=tk.BOTTOM, fill=tk.X)
        text_frame = ttk.Frame(editor)
        text_frame.pack(fill=tk.BOTH, expand=True)
        self.body_text = tk.Text(text_frame, height=10, wrap=tk.WORD, undo=True)
        self.body_scroll = ttk.Scrollbar(
            text_frame, orient=tk.VERTICAL, command=self.body_text.yview
        )
        self.body_text.configure(yscrollcommand=self.body_scroll.set)
        self.body_scroll.pack(side=tk.RIGHT, fill=tk.Y)
        self.body_text.pack(side=tk.LEFT, fill=tk.BOTH, expand=True)
        tags = ttk.Frame(bottom)
        tags.pack(fill=tk.X, pady=4)
        self.tags_label = ttk.Label(tags, text="Tags: –")
        self.tags_label.pack(side=tk.LEFT)
        self.tag_entry = ttk.Entry(tags, width=14)
        self.tag_entry.pack(side=tk.LEFT, padx=4)
        self.add_tag_button = ttk.Button(tags, text="Add tag", command=self.add_tag)
        self.add_tag_button.pack(side=tk.LEFT)
        self.remove_tag_button = ttk.Button(tags, text="Remove tag", command=self.remove_tag)
        self.remove_tag_button.pack(side=tk.LEFT, padx=4)
        self.save_button = ttk.Button(bottom, text="Save (Ctrl+S)", command=self.save)
        self.save_button.pack(anchor=tk.E)

    def _build_status_bar(self) -> None:
        bar = ttk.Frame(self.root, padding=(6, 2), relief=tk.SUNKEN)
        bar.pack(side=tk.BOTTOM, fill=tk.X)
        self.state_label = ttk.Label(bar, width=14)
        self.state_label.pack(side=tk.LEFT)
        self.pending_label = ttk.Label(bar, width=17)
        self.pending_label.pack(side=tk.LEFT)
        self.sync_label = ttk.Label(bar, width=15)
        self.sync_label.pack(side=tk.LEFT)
        self.offline_var = tk.BooleanVar(master=self.root, value=self.model.working_offline)
        self.offline_check = ttk.Checkbutton(
            bar, text="Work offline", variable=self.offline_var, command=self._toggle_offline
        )
        self.offline_check.pack(side=tk.RIGHT)
        self.rejected_button = ttk.Button(bar, text="Rejected (0)", command=self.show_rejected)
        self.rejected_button.pack(side=tk.RIGHT, padx=4)
        # Shown only while the server refuses the token (packed by refresh_status).
        self.sign_in_button = ttk.Button(bar, text="Sign in…", command=self.sign_in)
        # A row of its own above the bar, shown only during a long download
        # (packed by refresh_progress).
        self.progress_row = ttk.Frame(self.root, padding=(6, 2))
        self.progress_bar = ttk.Progressbar(self.progress_row, length=220, maximum=1.0)
        self.progress_bar.pack(side=tk.LEFT)
        self.progress_label = ttk.Label(self.progress_row)
        self.progress_label.pack(side=tk.LEFT, padx=8)
        # The last error gets a line of its own, above the bar: it can be long.
        self.error_label = ttk.Label(self.root, foreground="#a00", padding=(8, 0))
        self.error_label.pack(side=tk.BOTTOM, fill=tk.X)

    def _build_conflict_bar(self) -> None:
        # Shown only while there are conflict notices (packed by refresh_conflicts).
        self.conflict_bar = tk.Frame(self.root, background="#fff3c4", padx=8, pady=4)
        self.conflict_label = tk.Label(
            self.conflict_bar, background="#fff3c4", anchor=tk.W, justify=tk.LEFT, wraplength=520
        )
        self.conflict_label.pack(side=tk.LEFT, fill=tk.X, expand=True)
        self.keep_theirs_button = ttk.Button(
            self.conflict_bar, text="Keep theirs", command=self.dismiss_conflict
        )
        self.keep_theirs_button.pack(side=tk.RIGHT)
        self.restore_button = ttk.Button(
            self.conflict_bar, text="Restore mine", command=self.restore_conflict
        )
        self.restore_button.pack(side=tk.RIGHT, padx=4)

    # -- refreshing ---------------------------------------------------------

    def _guarded(self, action: Callable[[], object]) -> None:
        """Run a refresh; a failure is logged and shown, never fatal to the window."""
        try:
            action()
        except Exception as exc:
            log.exception("the notes window could not refresh")
            self._message = f"{_REFRESH_FAILED}: {exc!r}"
            self.error_label.configure(text=self._message)

    def _refresh_all(self) -> None:
        self.refresh_notes()
        self.refresh_status()
        self.refresh_conflicts()

    def _poll(self) -> None:
        try:
            kinds = self.model.drain_updates()
            if "notes" in kinds:
                self._guarded(self.refresh_notes)
                self._guarded(self._refresh_editor_if_clean)
            if "conflicts" in kinds:
                self._guarded(self.refresh_conflicts)
            if "progress" in kinds:
                self._guarded(self.refresh_progress)
            if kinds:
                self._guarded(self.refresh_status)
            self._guarded(self._refresh_server_log)
        finally:
            # Rescheduled whatever happened: the window keeps following changes.
            self._poll_id = self.root.after(POLL_MS, self._poll)

    def refresh_notes(self) -> None:
        """Re-read the list (keeps the selection)."""
        tag = self.tag_filter.get()
        notes = self.model.notes(tag=None if tag == ALL_TAGS else tag, search=self.search_var.get())
        self._shown = [n.id for n in notes]
        self.note_list.delete(0, tk.END)
        for note in notes:
            self.note_list.insert(tk.END, note.label())
        if self.selected in self._shown:
            index = self._shown.index(self.selected)
            self.note_list.selection_set(index)
            self.note_list.see(index)
        self.tag_filter.configure(values=[ALL_TAGS, *self.model.all_tags()])
        if self._message.startswith(_REFRESH_FAILED):  # shown again: the failure is over
            self._message = ""
            self.refresh_status()

    def refresh_status(self) -> None:
        """Re-read the status bar."""
        line = self.model.status_line()
        self.state_label.configure(text=line.state)
        self.pending_label.configure(text=line.pending)
        self.sync_label.configure(text=line.last_sync)
        self.error_label.configure(text=line.error or self._message)
        self.rejected_button.configure(text=f"Rejected ({len(self.model.rejected())})")
        if self.model.needs_sign_in:
            # Packed first so that it keeps its width when the bar is crowded.
            self.sign_in_button.pack(side=tk.RIGHT, padx=4, before=self.state_label)
        else:
            self.sign_in_button.pack_forget()

    def sign_in(self, token: str | None = None) -> None:
        """Ask for an access token (unless given) and sync with it from now on."""
        if token is None:
            token = simpledialog.askstring(
                "Sign in", "Access token (idsync-server token create):", show="*", parent=self.root
            )
        if token is None:
            return  # cancelled
        try:
            self.model.sign_in(token)
        except ValueError as exc:
            self._message = str(exc)
        self.refresh_status()

    def refresh_progress(self) -> None:
        """Show the download under way in the status bar, or hide the bar."""
        line = self.model.progress_line()
        if line is None:
            self.progress_bar.stop()
            self.progress_row.pack_forget()
            return
        if line.fraction is None:  # no total yet: a bar that moves back and forth
            if self.progress_bar.cget("mode") != "indeterminate":
                self.progress_bar.configure(mode="indeterminate")
                self.progress_bar.start(50)
        else:
            self.progress_bar.stop()
            self.progress_bar.configure(mode="determinate", value=line.fraction)
        self.progress_label.configure(text=line.text)
        if not self.progress_row.winfo_manager():  # not shown yet
            self.progress_row.pack(side=tk.BOTTOM, fill=tk.X, before=self.error_label)

    def refresh_conflicts(self) -> None:
        """Show the oldest conflict notice (with Restore), or hide the bar."""
        notices = self.model.conflicts()
        if not notices:
            self.conflict_bar.pack_forget()
            return
        first = notices[0]
        more = f"  (1 of {len(notices)})" if len(notices) > 1 else ""
        note = self.model.note(first.note_id)
        about = f'In "{note.title}": ' if note is not None else ""
        self.conflict_label.configure(text=about + first.message() + more)
        if not self.conflict_bar.winfo_ismapped():
            self.conflict_bar.pack(side=tk.TOP, fill=tk.X, padx=6, pady=(0, 4))

    def _editor_text(self) -> tuple[str, str]:
        return self.title_entry.get(), self.body_text.get("1.0", "end-1c")

    def editor_is_dirty(self) -> bool:
        """Whether the editor holds text the user typed and has not saved."""
        return self._editor_text() != self._loaded

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
        if not self.editor_is_dirty():
            self._load_editor()

    def _keep_typed_text(self) -> None:
        """Save what the editor holds (autosave before it shows something else)."""
        if not self.editor_is_dirty():
            return
        title, body = self._editor_text()
        kept = self.model.keep_text(self.selected, title, body)
        if kept is not None and kept != self.selected:
            self._message = "The note was deleted elsewhere; your text is kept as a new note."
        self._loaded = self._editor_text()

    def _on_select(self) -> None:
        chosen = self.note_list.curselection()
        if not chosen or self._shown[chosen[0]] == self.selected:
            return
        target = self._shown[chosen[0]]
        self._keep_typed_text()
        self.select(target)

    # -- actions ------------------------------------------------------------

    def _shortcut(self, action: Callable[[], None]) -> str:
        action()
        return "break"  # the key is handled: no letter typed into a field

    def select(self, note_id: str) -> None:
        """Select a note in the list and open it in the editor (typed text is saved first)."""
        self._keep_typed_text()
        self.selected = note_id
        self.refresh_notes()
        self._load_editor()

    def new_note(self) -> None:
        """Create a note and open it."""
        self._keep_typed_text()
        self.select(self.model.create_note())
        self.title_entry.focus_set()
        self.title_entry.select_range(0, tk.END)

    def save(self) -> None:
        """Save the editor's title and body."""
        if self.selected is None and not self.editor_is_dirty():
            return
        title, body = self._editor_text()
        try:
            kept = self.model.keep_text(self.selected, title, body)
        except ValueError as exc:
            messagebox.showerror("Cannot save", str(exc), parent=self.root)
            return
        if kept is not None and kept != self.selected:
            self._message = "The note was deleted elsewhere; your text is kept as a new note."
            self.selected = kept
        self._loaded = self._editor_text()
        self.refresh_notes()
        self.refresh_status()

    def delete_note(self) -> None:
        """Ask, in a small dialog, whether to delete the selected note."""
        if self.selected is None:
            return
        if self.confirm_dialog is not None:
            self.confirm_dialog.destroy()
        note = self.model.note(self.selected)
        title = note.title if note is not None else "this note"
        dialog = self.confirm_dialog = tk.Toplevel(self.root)
        dialog.title("Delete note")
        dialog.transient(self.root)
        ttk.Label(
            dialog, text=f'Delete "{title[:60]}"? This cannot be undone.', padding=10
        ).pack()
        buttons = ttk.Frame(dialog, padding=(10, 0, 10, 10))
        buttons.pack()
        note_id = self.selected
        self.confirm_delete_button = ttk.Button(
            buttons, text="Delete", command=lambda: self._delete_confirmed(note_id)
        )
        self.confirm_delete_button.pack(side=tk.LEFT, padx=4)
        self.cancel_delete_button = ttk.Button(buttons, text="Cancel", command=self._close_confirm)
        self.cancel_delete_button.pack(side=tk.LEFT)
        dialog.bind("<Escape>", lambda _: self._close_confirm())
        self.cancel_delete_button.focus_set()

    def _close_confirm(self) -> None:
        if self.confirm_dialog is not None:
            self.confirm_dialog.destroy()
            self.confirm_dialog = None

    def _delete_confirmed(self, note_id: str) -> None:
        self._close_confirm()
        self.model.delete_note(note_id)
        if self.selected == note_id:
            self.selected = None
            self._load_editor()
        self.refresh_notes()

    def add_tag(self) -> None:
        """Add the tag typed in the tag box to the selected note."""
        self._change_tag(self.model.add_tag)

    def remove_tag(self) -> None:
        """Remove the tag typed in the tag box from the selected note."""
        self._change_tag(self.model.remove_tag)

    def _change_tag(self, action: Callable[[str, str], object]) -> None:
        if self.selected is None:
            return
        try:
            action(self.selected, self.tag_entry.get())
        except ValueError as exc:
            messagebox.showerror("Tag", str(exc), parent=self.root)
            return
        self.tag_entry.delete(0, tk.END)
        self.tags_label.configure(
            text="Tags: " + (", ".join(self.model.tags(self.selected)) or "–")
        )
        self.refresh_notes()

    def restore_conflict(self) -> None:
        """Set the lost value of the oldest conflict notice again."""
        notices = self.model.conflicts()
        if not notices:
            return
        try:
            self.model.restore(notices[0].id)
        except KeyError as exc:
            self._message = f"Cannot restore: {exc.args[0]}"
        self.refresh_conflicts()
        self.refresh_notes()
        if self.selected == notices[0].note_id:
            self._refresh_editor_if_clean()
        self.refresh_status()

    def dismiss_conflict(self) -> None:
        """Keep the other device's value: forget the oldest conflict notice."""
        notices = self.model.conflicts()
        if notices:
            self.model.dismiss_conflict(notices[0].id)
        self.refresh_conflicts()

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

    def show_server_log(self) -> None:
        """A window with the output of the server this app started, kept up to date."""
        if self.log_window is not None and self.log_window.winfo_exists():
            self.log_window.lift()
            return
        window = self.log_window = tk.Toplevel(self.root)
        window.title("Server log")
        self.log_text = tk.Text(window, width=100, height=20, wrap=tk.NONE)
        scroll = ttk.Scrollbar(window, orient=tk.VERTICAL, command=self.log_text.yview)
        self.log_text.configure(yscrollcommand=scroll.set)
        scroll.pack(side=tk.RIGHT, fill=tk.Y)
        self.log_text.pack(fill=tk.BOTH, expand=True)
        self._log_shown = 0
        self._refresh_server_log()

    def _refresh_server_log(self) -> None:
        if self.server_log is None or self.log_window is None:
            return
        if not self.log_window.winfo_exists():
            self.log_window = None
            return
        lines = self.server_log()
        if len(lines) > self._log_shown:
            self.log_text.insert(tk.END, "".join(lines[self._log_shown :]))
            self._log_shown = len(lines)
            self.log_text.see(tk.END)

    def close(self) -> None:
        """Save typed text, then close the window and the client."""
        try:
            self._keep_typed_text()
        except Exception:  # closing must not fail; the error is in the log
            log.exception("could not save the editor's text on close")
        self.root.after_cancel(self._poll_id)
        self.model.close()
        self.root.destroy()
