document.querySelector("h1").title = "served from an imgc image";
