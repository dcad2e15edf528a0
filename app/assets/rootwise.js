/* The nav's client-side parts (app/dashboard.py): the theme and the range picker's navigation.
 *
 * The theme is a class on <html> ("theme-dark" / "theme-light") that style.css turns into colours. It is kept
 * in localStorage by the dcc.Store "rw-theme" (as JSON, under that key); this file runs before Dash renders,
 * so a stored dark theme never flashes light. No stored choice: the browser's prefers-color-scheme.
 */
(function () {
  var KEY = "rw-theme";

  function preferred() {
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function stored() {
    try {
      var value = JSON.parse(window.localStorage.getItem(KEY));
      return value === "dark" || value === "light" ? value : null;
    } catch (e) {
      return null;
    }
  }

  function apply(theme) {
    var root = document.documentElement;
    root.classList.remove("theme-dark", "theme-light");
    root.classList.add("theme-" + theme);
    root.style.colorScheme = theme; // native form controls and scrollbars follow
  }

  apply(stored() || preferred());

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    rootwise: {
      /* rw-theme.data -> the toggle's label; applies the theme as a side effect */
      applyTheme: function (theme) {
        var current = theme === "dark" || theme === "light" ? theme : stored() || preferred();
        apply(current);
        return current === "dark" ? "☀ Light" : "☾ Dark";
      },
      /* a click on the toggle -> rw-theme.data */
      toggleTheme: function (_clicks) {
        return document.documentElement.classList.contains("theme-dark") ? "light" : "dark";
      },
      /* the picker's choice ({query: {range} | {from, to} | {}}) -> the URL: the page's own params kept, the
         range params replaced; rw-range-nav is a callback-nav Location, so the page re-renders with it */
      navigate: function (choice) {
        var noUpdate = window.dash_clientside.no_update;
        if (!choice || !choice.query) {
          return noUpdate;
        }
        var params = new URLSearchParams(window.location.search);
        ["range", "from", "to"].forEach(function (key) {
          if (!(key in choice.query)) {
            params.delete(key);
          }
        });
        Object.keys(choice.query).forEach(function (key) {
          params.set(key, choice.query[key]);
        });
        var search = params.toString().replace(/%3A/gi, ":");
        var loc = window.location;
        var href = loc.origin + loc.pathname + (search ? "?" + search : "") + loc.hash;
        return href === loc.href ? noUpdate : href;
      },
    },
  });
})();
