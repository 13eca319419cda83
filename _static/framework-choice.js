// sphinx-design syncs the framework tabs across tab sets, pages and reloads (localStorage), and
// takes a choice from the address (`?framework=jax`). But it reads the address on every load, so
// after a reader who came by such a link picks another framework, a reload would undo the pick.
// Keep the address in step with the choice.
document.addEventListener("change", (event) => {
  const label = event.target.nextElementSibling; // sphinx-design: input, then its label
  const group = label?.dataset?.syncGroup;
  const url = new URL(window.location.href);
  if (!group || !event.target.checked || !url.searchParams.has(group)) return;
  url.searchParams.set(group, label.dataset.syncId);
  history.replaceState(history.state, "", url);
});
